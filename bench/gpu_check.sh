#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py) on a GPU machine with no network: torch+CUDA, transformers and peft
# there, DeepSpeed (and the rest hone's config needs) carried as wheels built here beforehand by
#   ../shared/tools/gpu-wheels.sh .gpu-wheels          (~51 MiB; .gpu-wheels/ is git-ignored: carry it)
# then, through the device tool, with the results written to $OUT as the runs go:
#   bench/gpu_check.sh                                 (about 5 minutes on one H200)
set -euo pipefail
cd "$(dirname "$0")/.."
site=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --target "$site" .gpu-wheels/*.whl
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
out=${OUT:-gpu-check}
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
python3 bench/gpu_check.py --out "$out" "$@" 2>&1 | tee "$out/gpu_check.log"

"""What forgetting costs in recall: the quickstart's sft stage, blended back toward the model it started from.

    .venv/bin/python bench/retention_blend.py                     # runs/handbook (after the quickstart), 0.5 0.7 0.85
    .venv/bin/python bench/retention_blend.py --run runs/handbook --blend 0.6

For each blend b, the weights are start + b * (end - start), where start is the model the sft stage was
given and end its export (a weight-space ensemble, as in Wortsman et al., 2022, "Robust fine-tuning of
zero-shot models"). Each blend is asked the pipeline's own questions, probes and retention checks, as the
answer table asks every stage, so its row reads like the quickstart's. b=1 is the sft row, b=0 the
pretrain row. The claim: how much recall a smaller rise of the general-text loss costs, without training
again. hone has no blend setting: this measures whether one would be worth having.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default=str(ROOT / "runs/handbook"), help="a finished handbook pipeline's output_dir")
    parser.add_argument("--stage", default="sft")
    parser.add_argument("--blend", type=float, nargs="+", default=[0.5, 0.7, 0.85])
    args = parser.parse_args()

    from safetensors.torch import load_file, save_file

    from hone.cluster.connect import ray_session
    from hone.cluster.pipeline import _answers, _asked, check_answer_eval, load_pipeline
    from hone.training.config import load_config

    run = Path(args.run).resolve()
    pipeline = json.loads((run / "pipeline.json").read_text())
    stage = next(s for s in pipeline["stages"] if s["name"] == args.stage)
    cfg = load_config(str(Path(stage["run_dir"]) / "config.yaml"))
    start_dir, end_dir = Path(cfg.model.source), Path(stage["run_dir"]) / "model"
    start, end = load_file(start_dir / "model.safetensors"), load_file(end_dir / "model.safetensors")
    spec = load_pipeline(ROOT / "examples/handbook/pipeline.yaml", [f"output_dir={run}"]).eval  # its probes
    assert spec is not None
    asked = _asked(check_answer_eval(spec), spec)
    keys = ["exact_match", "exact_match/handbook_only", "contains/handbook_only", "exact_match/paraphrase"]
    keys += ["exact_match/doc_recall", "retention/loss", "retention/agreement"]
    base_loss = pipeline["answers"]["base"]["retention/loss"]
    with tempfile.TemporaryDirectory() as tmp, ray_session(None):
        out = Path(tmp)
        shutil.copy(run / "answers.json", out / "answers.json")  # the base's retention answers, to agree with
        print(f"blend  {'  '.join(keys)}  (retention/loss rise over the base)")
        for blend in args.blend:
            model = out / f"blend-{blend}"
            shutil.copytree(end_dir, model, ignore=shutil.ignore_patterns("adapter", "model.safetensors"))
            weights = {k: start[k] + blend * (end[k] - start[k]) for k in end}
            save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})
            got = _answers(out, f"blend {blend}", cfg, str(model), spec, asked)
            cells = "  ".join(f"{100 * got[k]:.1f}" if k != "retention/loss" else f"{got[k]:.3f}" for k in keys)
            print(f"{blend:<5}  {cells}  (+{100 * (got['retention/loss'] / base_loss - 1):.1f}%)", flush=True)


if __name__ == "__main__":
    main()

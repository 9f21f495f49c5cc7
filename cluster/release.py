"""`hone export RUN_DIR`: a finished run's model as something to ship, with a model card.

    hone export runs/my-run                        # merged weights in the base dtype (a Hugging Face dir)
    hone export runs/my-run --format adapter       # the LoRA adapter alone (peft)
    hone export runs/my-run --format gguf          # one .gguf file for llama.cpp / Ollama (f16; --outtype q8_0)
    hone export runs/my-run --push-to-hub me/my-model

The run already holds model/ (merged, base dtype) and model/adapter/ (LoRA); hf and adapter copy them. GGUF
goes through llama.cpp's own converter (convert_hf_to_gguf.py with its gguf-py): hone writes no GGUF
tensors itself, so every architecture llama.cpp converts is exported the way llama.cpp reads it. PyPI has
that converter only inside llama-cpp-python's source archive (the `vendor/llama.cpp` it builds from), so
the first gguf export downloads that archive once and keeps the converter's files (2 MiB) in the hone
cache; `HONE_LLAMA_CPP` may name a llama.cpp checkout instead. Quantizing below 8 bits needs llama.cpp's
compiled `llama-quantize`, which this does not build: q8_0 is the smallest type offered.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import yaml

from hone.cluster.rundir import format_table
from hone.training.errors import HoneError
from hone.training.files import read_json, write_text
from hone.training.models import CACHE_DIR

FORMATS = ("hf", "adapter", "gguf")
GGUF_TYPES = ("f16", "bf16", "q8_0", "f32")
# llama-cpp-python's source archive vendors llama.cpp (MIT) at a tested commit; this is the one tested here.
LLAMA_CPP_PYTHON = "0.3.36"
CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")


class ExportError(HoneError):
    """An export that cannot be made; the message says why and what to do."""


def export_run(
    run_dir: str | Path,
    fmt: str,
    out: str | Path | None = None,
    outtype: str = "f16",
    recall_check: bool = True,
    questions: str | None = None,
) -> Path:
    """Write the run's model in `fmt` to `out` (default RUN_DIR/export/<fmt>) with a README.md model card;
    the path written. An existing `out` is never overwritten. A GGUF export is read back and asked the
    run's held-out questions (or `questions`, a file of them) beside the HF model, unless `recall_check`
    is off: the difference goes to the terminal and the card."""
    run = Path(run_dir)
    summary, config, model = finished_run(run)
    target = Path(out) if out else run / "export" / (f"gguf-{outtype}" if fmt == "gguf" else fmt)
    if target.exists():
        raise ExportError(f"{target} already exists; remove it or pass -o with a new folder (hone never overwrites an export)")
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=_existing_parent(target)))
    try:
        if fmt == "hf":
            shutil.copytree(model, staging, ignore=shutil.ignore_patterns("adapter"), dirs_exist_ok=True)
        elif fmt == "adapter":
            if not (model / "adapter").is_dir():
                raise ExportError(f"{run} trained full weights (lora.enabled was false): there is no adapter; use --format hf")
            shutil.copytree(model / "adapter", staging, dirs_exist_ok=True)
        else:
            gguf = to_gguf(model, staging / f"{run.resolve().name}-{outtype}.gguf", outtype)
        card = model_card(run, summary, config, fmt)
        if fmt == "gguf" and recall_check:
            said = gguf_recall(run, model, gguf, outtype, questions)
            print(f"hone: {said}")
            card += f"\n## GGUF round trip\n\n{said}\n"
        write_text(staging / "README.md", card)
        staging.rename(target)  # whole or not at all: a failed export leaves nothing that looks finished
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def finished_run(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """A finished run's summary, saved config and model dir (export, chat and serve start here); an error
    saying why for anything else."""
    run = Path(run_dir)
    summary = read_json(run / "summary.json")
    if not summary or not (run / "model" / "config.json").is_file():
        raise ExportError(
            f"{run} holds no finished run with a model (no summary.json or model/); hone report {run} shows its state"
        )
    if summary["mode"] in ("synth", "reward"):
        raise ExportError(
            f"{run} is a {summary['mode']} run: it has no model that writes text (sft, pretrain, dpo and rl runs do)"
        )
    model = Path(summary["model_path"]) if Path(summary["model_path"]).is_dir() else run / "model"
    return summary, yaml.safe_load((run / "config.yaml").read_text()), model


def _existing_parent(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.parent


# ----------------------------------------------------------------------------------------------------
# GGUF through llama.cpp's converter


def to_gguf(model_dir: Path, out_file: Path, outtype: str = "f16") -> Path:
    if outtype not in GGUF_TYPES:
        raise ExportError(f"--outtype {outtype!r}: choose one of {', '.join(GGUF_TYPES)} (smaller types need llama-quantize)")
    root = gguf_converter()
    # Its own gguf-py first: the converter and the gguf library it writes with come from the same commit.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "gguf-py"), str(root)])}
    command = [
        sys.executable,
        str(root / "convert_hf_to_gguf.py"),
        str(model_dir),
        "--outfile",
        str(out_file),
        "--outtype",
        outtype,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not out_file.is_file():
        raise ExportError(f"llama.cpp's converter could not convert {model_dir}:\n{(done.stderr or done.stdout)[-2000:]}")
    return out_file


def gguf_converter() -> Path:
    """The folder holding llama.cpp's converter: $HONE_LLAMA_CPP, or the copy in the hone cache, fetched
    from PyPI the first time."""
    if named := os.environ.get("HONE_LLAMA_CPP"):
        root = Path(named).expanduser()
        if not (root / "convert_hf_to_gguf.py").is_file():
            raise ExportError(f"HONE_LLAMA_CPP={named} holds no convert_hf_to_gguf.py; point it at a llama.cpp checkout")
        return root
    root = CACHE_DIR / f"llama.cpp-from-llama-cpp-python-{LLAMA_CPP_PYTHON}"
    if not (root / "convert_hf_to_gguf.py").is_file():
        fetch_converter(root)
    return root


def fetch_converter(root: Path) -> None:
    print(f"hone: fetching llama.cpp's GGUF converter (llama-cpp-python {LLAMA_CPP_PYTHON} source from PyPI, once)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        pip = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", "--no-deps"]
        done = subprocess.run(
            [*pip, "--no-binary", ":all:", f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", tmp], capture_output=True, text=True
        )
        archives = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if done.returncode != 0 or not archives:
            raise ExportError(
                f"could not download llama-cpp-python {LLAMA_CPP_PYTHON}'s source, which holds llama.cpp's GGUF converter "
                f"({done.stderr.strip()[-500:]}); without PyPI, set HONE_LLAMA_CPP to a llama.cpp checkout"
            )
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
        staging = Path(tempfile.mkdtemp(prefix=".llama.cpp-", dir=_existing_parent(root)))
        with tarfile.open(archives[0]) as archive:
            wanted = [
                m for m in archive.getmembers() if m.name.startswith(prefix) and m.name[len(prefix) :].startswith(CONVERTER_FILES)
            ]
            for member in wanted:
                member.name = member.name[len(prefix) :]
            archive.extractall(staging, members=wanted, filter="data")
        staging.rename(root)


def gguf_recall(run: Path, model: Path, gguf: Path, outtype: str, questions: str | None = None) -> str:
    """The run's held-out questions (an sft run's eval split as its evaluation asked them, or a questions
    file) asked greedily of the HF model and of the GGUF file read back as hone reads GGUF (dequantized by
    transformers); one line saying what each scored and how many answers changed."""
    from hone.training.config import load_config
    from hone.training.data import detect_format, load_rows, read_dataset
    from hone.training.evaluate import answer_replies, reply_metrics
    from hone.training.models import resolve_source

    # a questions file is asked whole; the run's own eval split as many as its evaluation asked
    cfg = load_config(str(run / "config.yaml"), ["eval.max_samples=0"] if questions else [])
    try:
        if questions:
            rows = load_rows([questions])
            fmt = detect_format(rows, "auto")
        elif cfg.mode == "sft":
            fmt, _, rows = read_dataset(cfg.data, cfg.mode, cfg.seed)
        else:
            return f"no recall check: a {cfg.mode} run has no held-out questions; pass --questions FILE to ask some"
    except HoneError as err:  # the run's data moved or changed since: the export itself is still good
        return f"no recall check: the questions could not be read ({err}); pass --questions FILE"
    hf = answer_replies(cfg, str(model), rows, fmt)
    back = answer_replies(cfg, resolve_source(str(gguf)), rows, fmt)
    a, b = reply_metrics(hf), reply_metrics(back)
    changed = sum(x["reply"] != y["reply"] for x, y in zip(hf, back, strict=True))
    return (
        f"asked {len(hf)} held-out questions of both: HF model exact match {100 * a['exact_match']:.1f}% | contains "
        f"{100 * a['contains']:.1f}%, GGUF {outtype} {100 * b['exact_match']:.1f}% | {100 * b['contains']:.1f}% "
        f"(contains {100 * (b['contains'] - a['contains']):+.1f} points); {changed} answer(s) changed"
    )


# ----------------------------------------------------------------------------------------------------
# The model card


def model_card(run: Path, summary: dict[str, Any], config: dict[str, Any], fmt: str) -> str:
    """README.md for an export: base model, data, recipe and the run's own before/after table, with the
    hub's YAML header (base_model, library, tags)."""
    base = config["model"]["source"]
    lora = config["lora"]
    header = {
        "base_model": base if not Path(base).exists() else None,
        "library_name": "peft" if fmt == "adapter" else ("gguf" if fmt == "gguf" else "transformers"),
        "tags": ["hone", summary["mode"], *(["lora"] if lora["enabled"] else [])],
    }
    data = summary.get("data", {})
    recipe = [
        f"- mode: `{summary['mode']}`, {summary['steps']} steps of {summary.get('global_batch', '?')} examples",
        f"- learning rate {config['optim']['lr']} ({config['optim']['decay']} decay), max_seq_len {config['data']['max_seq_len']}",
        f"- LoRA rank {lora['rank']}, alpha {lora['alpha']}, {lora['target_modules']}" if lora["enabled"] else "- full weights",
        f"- DeepSpeed ZeRO stage {config['deepspeed']['zero_stage']}, {config['scaling']['num_workers']} worker(s)",
    ]
    sources = [s["path"] if isinstance(s, dict) else s for s in config["data"]["train"]]
    lines = [
        "---",
        yaml.safe_dump({k: v for k, v in header.items() if v is not None}, sort_keys=False).strip(),
        "---",
        f"# {run.resolve().name}",
        "",
        f"Fine-tuned from `{base}` with hone; exported as `{fmt}`"
        + (
            " (the LoRA adapter alone: load it on the base model with peft)."
            if fmt == "adapter"
            else (" (the LoRA adapter merged into the weights)." if lora["enabled"] else ".")
        ),
        "",
        "## Data",
        "",
        *[f"- `{Path(s).name if Path(s).exists() else s}`" for s in sources],
        f"- {data.get('train', {}).get('rows', '?')} training rows, {data.get('eval', {}).get('rows', '?')} held out"
        + (f" (format `{data['format']}`)" if data.get("format") else ""),
        "",
        "## Recipe",
        "",
        *recipe,
        "",
        "## Held-out results (before and after training)",
        "",
        "```",
        format_table({**summary, "model_path": ""}).strip(),
        "```",
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------
# The hub


def push_to_hub(folder: Path, repo_id: str) -> str:
    """Upload an export to a (new or existing) hub model repository; its URL. Needs a token (HF_TOKEN or
    `hf auth login`); a failure names the repository and leaves the export where it is."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model")
    except Exception as err:  # offline, no token, no right to the namespace: huggingface_hub says which
        raise ExportError(
            f"could not push {folder} to the hub repository {repo_id}: {type(err).__name__}: {str(err)[:400]}; "
            f"the export stays at {folder} (log in with `hf auth login` or set HF_TOKEN, then push again)"
        ) from None
    return f"https://huggingface.co/{repo_id}"

"""Where a tuned model's loss on general text goes: knowledge lost, or only confidence.

    .venv/bin/python bench/general_loss.py runs/handbook            # base and every stage of a pipeline run
    .venv/bin/python bench/general_loss.py base=/path/a tuned=/path/b

For each model, on examples/retention/general.txt (the pipeline's retention text, the same 256-token
windows as `retention/loss`): the mean token loss, the mean entropy of its next-token distribution, and
the loss with its logits divided by the temperature that fits the text best. A model whose loss rises
while its entropy falls has grown overconfident; when dividing by a temperature brings the loss back,
its ranking of the next tokens is mostly intact and only its certainty grew (what `train.label_smoothing`
and sampled replay act on). The best temperature is fitted on the measured text itself, so it is a
diagnosis, never a score: hone does not rescale a model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from smollm2 import gguf_path  # noqa: E402  (bench/ is on the path when this script runs)

TEMPERATURES = [0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.8, 2.0]


def pipeline_models(run: Path) -> dict[str, str]:
    """base and the model after every stage that exported one, from a pipeline run's pipeline.json."""
    saved = json.loads((run / "pipeline.json").read_text())
    models = {"base": str(gguf_path())}
    for stage in saved["stages"]:
        model = Path(stage["run_dir"]) / "model"
        if (model / "config.json").exists():
            models[f"after {stage['name']}"] = str(model)
    return models


def measure(source: str, ids: list[int], window: int) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM

    from hone.training.evaluate import text_windows
    from hone.training.models import resolve_source

    model = AutoModelForCausalLM.from_pretrained(resolve_source(source), dtype=torch.float32).eval()
    logits, targets = [], []
    for chunk in text_windows(ids, window):  # the windows of hone's retention/loss
        piece = torch.tensor([chunk])
        with torch.no_grad():
            logits.append(model(input_ids=piece).logits[0, :-1].float())
        targets.append(piece[0, 1:])
    lg, tg = torch.cat(logits), torch.cat(targets)
    logp = torch.log_softmax(lg, -1)
    losses = {t: float(torch.nn.functional.cross_entropy(lg / t, tg)) for t in TEMPERATURES}
    best = min(losses, key=lambda t: losses[t])
    return {
        "loss": losses[1.0],
        "entropy": float(-(logp.exp() * logp).sum(-1).mean()),
        "best_temperature": best,
        "loss_at_best": losses[best],
    }


def main() -> None:
    from transformers import AutoTokenizer

    from hone.training.evaluate import RETENTION_WINDOW
    from hone.training.models import resolve_source

    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+", help="a pipeline run dir, or name=model entries")
    parser.add_argument("--text", default=str(ROOT / "examples" / "retention" / "general.txt"))
    args = parser.parse_args()
    if len(args.models) == 1 and "=" not in args.models[0]:
        models = pipeline_models(Path(args.models[0]))
    else:
        models = dict(entry.split("=", 1) for entry in args.models)
    tokenizer = AutoTokenizer.from_pretrained(resolve_source(next(iter(models.values()))))
    ids = tokenizer(Path(args.text).read_text(), add_special_tokens=False)["input_ids"]
    print(f"{len(ids)} tokens of {args.text}")
    print(f"{'model':16s} {'loss':>8s} {'vs first':>9s} {'entropy':>8s} {'best T':>7s} {'loss at T':>10s} {'vs first':>9s}")
    first: dict[str, float] = {}
    for name, source in models.items():
        m = measure(source, ids, RETENTION_WINDOW)
        first = first or m
        print(
            f"{name:16s} {m['loss']:8.3f} {m['loss'] / first['loss'] - 1:+9.1%} {m['entropy']:8.3f} "
            f"{m['best_temperature']:7.1f} {m['loss_at_best']:10.3f} {m['loss_at_best'] / first['loss'] - 1:+9.1%}",
            flush=True,
        )


if __name__ == "__main__":
    main()

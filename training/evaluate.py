"""The before/after evaluation: the same function scores the base model and the exported one.

pretrain: held-out `loss` and `perplexity` (for masked LMs, over a fixed, seeded masking).
sft:      held-out `loss` on completion tokens, `exact_match` and `contains` of greedy generations (also per
          `group` when the eval rows have one).
dpo:      held-out DPO `loss`, `reward_accuracy` (pairs whose implicit reward margin is > 0) and the mean
          `reward_margin`. Before training the policy is the reference: margin 0, accuracy 0, loss log 2.
reward:   held-out Bradley-Terry `loss`, pairwise `accuracy` (chosen scored above rejected), mean `margin`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from hone.training.batches import collate_pairs
from hone.training.config import HoneConfig
from hone.training.data import PREFERENCE_MODES, Row, normalize_answer
from hone.training.forward import pair_scores, summed_loss, summed_pair_stats
from hone.training.handoff import dereference
from hone.training.shards import ALONE, Shard
from hone.training.tokens import Example, generation_prompt, reference_completion

if TYPE_CHECKING:
    from hone.training.generation import Engine


def evaluate_model(
    cfg: HoneConfig, model_dir: str, kind: str, examples: Sequence[Example], rows: list[Row], fmt: str
) -> dict[str, float]:
    tokenizer, model = _load(cfg, model_dir, kind)
    return model_scores(model, tokenizer, cfg, kind, examples, rows, fmt)


def model_scores(
    model: Any,
    tokenizer: Any,
    cfg: HoneConfig,
    kind: str,
    examples: Sequence[Example],
    rows: list[Row],
    fmt: str,
    shard: Shard = ALONE,
) -> dict[str, float]:
    """The mode's held-out scores of `model`. On a worker group every rank scores its share of the examples
    and prompts and gets the same scores back (`on_sharded_model`)."""
    if cfg.mode in PREFERENCE_MODES:
        return pair_metrics(model, tokenizer, examples, cfg, shard)
    loss = heldout_loss(model, tokenizer, examples, cfg, kind, shard)
    if cfg.mode == "pretrain":
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
    return {"loss": loss, **reply_metrics(scored_replies(model, tokenizer, rows, fmt, cfg, shard=shard))}


def on_sharded_model(loop_config: dict[str, Any]) -> None:
    """Ray Train's train_func for work on a model that may only fit partitioned (ZeRO-3): the before/after
    evaluation (`job` = model_scores) and DPO's reference log-probs (`pair_logps`). The model is loaded
    over the worker group exactly as training loads it (no rank ever holds it whole) and wrapped in a
    DeepSpeed engine without an optimizer (ZeRO-3 inference: each layer gathered for its forward pass,
    then freed); `job(model, tokenizer, shard=..., **args)` splits its work over the ranks and returns the
    same result on each. Every rank reports to the driver's RunLog the result, and how many of its
    parameters it held only a partition of."""
    from hone.training.ds_config import import_deepspeed

    loop_config = dereference(loop_config)
    cfg: HoneConfig = loop_config["args"]["cfg"]
    import_deepspeed(cfg.scaling.use_gpu)
    import ray
    import ray.train
    import torch

    from hone.training.ds_config import inference_config, initialize_inference
    from hone.training.models import load_for_engine, load_tokenizer, partitioned

    ctx = ray.train.get_context()
    shard = Shard(ctx.get_world_rank(), ctx.get_world_size())
    torch.manual_seed(cfg.seed)
    model_dir = loop_config["model_dir"]
    # examples the driver put in the object store (nodes with no shared cache) are fetched here
    args = {k: ray.get(v) if isinstance(v, ray.ObjectRef) else v for k, v in loop_config["args"].items()}
    tokenizer = load_tokenizer(cfg.model, model_dir, cfg.data.chat_template)
    ds_config = inference_config(cfg)
    model = load_for_engine(cfg.model, model_dir, loop_config["kind"], ds_config)
    module = initialize_inference(model, cfg, ds_config).module.eval()
    result = loop_config["job"](module, tokenizer, shard=shard, **args)
    num_params, held_in_part = partitioned(module)
    report = {"rank": shard.rank, "result": result, "num_params": num_params, "num_params_local_empty": held_in_part}
    ray.get(loop_config["log"].worker.remote(report))


def answer_metrics(cfg: HoneConfig, model_dir: str, rows: list[Row], fmt: str) -> dict[str, float]:
    """Greedy answers to held-out questions, scored as sft's evaluation scores them (exact_match, contains,
    per group): the one yardstick a pipeline applies to its base model and to every stage's export."""
    return reply_metrics(answer_replies(cfg, model_dir, rows, fmt))


def answer_replies(cfg: HoneConfig, model_dir: str, rows: list[Row], fmt: str) -> list[dict[str, Any]]:
    """`scored_replies` of the model in `model_dir`, loaded whole in this process."""
    tokenizer, model = _load(cfg, model_dir, "causal")
    return scored_replies(model, tokenizer, rows, fmt, cfg)


RETENTION_WINDOW = 256  # tokens per window of the retention text


def pipeline_answers(
    cfg: HoneConfig,
    model_dir: str,
    questions: list[Row],
    fmt: str,
    probes: list[Row],
    text: str,
    prompts: list[str],
    prompt_tokens: int = 32,
) -> dict[str, Any]:
    """`answers_of` the model in `model_dir`, loaded whole in this process. The answers come from vLLM where
    generation.backend resolves to it (bf16 there: a near tie between two tokens may fall the other way
    than in fp32); the text loss always from the HF model."""
    from hone.training.generation import vllm_engine

    tokenizer, model = _load(cfg, model_dir, "causal")
    engine = vllm_engine(cfg.generation.backend, model_dir)
    return answers_of(model, tokenizer, cfg, questions, fmt, probes, text, prompts, prompt_tokens, engine)


def answers_of(
    model: Any,
    tokenizer: Any,
    cfg: HoneConfig,
    questions: list[Row],
    fmt: str,
    probes: list[Row],
    text: str,
    prompts: list[str],
    prompt_tokens: int = 32,
    engine: Engine | None = None,
    shard: Shard = ALONE,
) -> dict[str, Any]:
    """One model asked everything a pipeline's `eval:` asks: its held-out questions (scored as sft's
    evaluation scores them), the document-recall probes (their own group, outside "all"), and for
    retention the mean token loss on general text and greedy answers to general instructions (the caller
    compares them with the base model's own). `replies` keeps every scored reply, questions then probes:
    which facts a model missed, and what it said instead. On a worker group (`on_sharded_model`, ZeRO-3)
    each rank takes its share of every part."""
    replies = scored_replies(model, tokenizer, questions, fmt, cfg, engine, shard)
    scores = reply_metrics(replies)
    if probes:
        probed = scored_replies(model, tokenizer, probes, fmt, cfg, engine, shard)
        scores |= {k: v for k, v in reply_metrics(probed).items() if "/" in k}
        replies += probed
    if text.strip():
        # one window for every model, whatever its stage's max_seq_len, so the losses compare
        window = min(RETENTION_WINDOW, getattr(model.config, "max_position_embeddings", None) or RETENTION_WINDOW)
        scores["retention/loss"] = text_loss(model, tokenizer, text, window, shard)
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": ""}]} for p in prompts]
    longer = replace(cfg, eval=replace(cfg.eval, max_new_tokens=prompt_tokens))
    answers = [a.strip() for a in greedy_completions(model, tokenizer, rows, "messages", longer, engine, shard)]
    return {"scores": scores, "replies": replies, "retention_answers": answers, "engine": engine.name if engine else "hf"}


def text_loss(model: Any, tokenizer: Any, text: str, window: int, shard: Shard = ALONE) -> float:
    """Mean next-token loss over `text`, read in windows of `window` tokens (each rank its share)."""
    import torch

    windows = text_windows(tokenizer(text, add_special_tokens=False)["input_ids"], window)
    total, count = 0.0, 0.0
    for i in shard.take(range(len(windows)), -1):
        piece = torch.tensor([windows[max(i, 0)]], device=next(model.parameters()).device)
        with torch.no_grad():
            loss = model(input_ids=piece, labels=piece).loss
        if i >= 0:  # -1: a rank's padding, run only to keep the ranks' forward passes in step
            total, count = total + float(loss) * (piece.shape[1] - 1), count + piece.shape[1] - 1
    total, count = shard.sum(total, count)
    return total / max(count, 1)


def text_windows(ids: list[int], window: int) -> list[list[int]]:
    """`ids` in windows of `window` tokens that overlap by one, so every token after the first is
    predicted exactly once; a last window of a single token predicts nothing and is left out."""
    chunks = (ids[start : start + window] for start in range(0, max(len(ids) - 1, 1), window - 1))
    return [chunk for chunk in chunks if len(chunk) >= 2]


def answer_agreement(answers: list[str], reference: list[str]) -> float:
    """Mean token F1 of each answer against the reference answer to the same prompt (1.0: the same words)."""
    scores = []
    for mine, theirs in zip(answers, reference, strict=True):
        a, b = normalize_answer(mine).split(), normalize_answer(theirs).split()
        common = sum(min(a.count(w), b.count(w)) for w in set(a))
        scores.append(0.0 if not common else 2 * common / (len(a) + len(b)))
    return _mean(scores)


def _load(cfg: HoneConfig, model_dir: str, kind: str) -> tuple[Any, Any]:
    import torch

    from hone.training.models import load_model, load_tokenizer

    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model, model_dir, cfg.data.chat_template)
    model = load_model(cfg.model, model_dir, kind).eval()
    if torch.cuda.is_available():
        model = model.to("cuda")
    return tokenizer, model


def pair_metrics(
    model: Any, tokenizer: Any, examples: Sequence[Example], cfg: HoneConfig, shard: Shard = ALONE
) -> dict[str, float]:
    totals = summed_pair_stats(model, shard.examples(examples), tokenizer, cfg)
    keys = list(totals)
    totals = dict(zip(keys, shard.sum(*(totals[k] for k in keys)), strict=True))
    n = max(totals["count"], 1.0)
    prefix = "reward_" if cfg.mode == "dpo" else ""  # DPO's are implicit rewards, a reward model's are its own
    return {"loss": totals["loss"] / n, f"{prefix}accuracy": totals["correct"] / n, f"{prefix}margin": totals["margin"] / n}


def reference_logps(
    cfg: HoneConfig, model_dir: str, train: Sequence[Example], held_out: Sequence[Example]
) -> dict[str, list[list[float]]]:
    """DPO's frozen reference: the base model's `pair_logps`, loaded whole in this process."""
    tokenizer, model = _load(cfg, model_dir, "causal")
    return pair_logps(model, tokenizer, cfg, train, held_out)


def pair_logps(
    model: Any, tokenizer: Any, cfg: HoneConfig, train: Sequence[Example], held_out: Sequence[Example], shard: Shard = ALONE
) -> dict[str, list[list[float]]]:
    """[chosen, rejected] summed completion log-probs of every train and eval pair. Batched exactly as the
    held-out evaluation batches (over the same ranks), so before training the policy's log-probs equal
    these bit for bit and the margin is exactly 0."""
    import torch

    device = next(model.parameters()).device
    out: dict[str, list[list[float]]] = {}
    for split, examples in (("train", train), ("eval", held_out)):
        mine = shard.examples(examples)
        pairs: list[list[float]] = []
        for start in range(0, len(mine), cfg.eval.batch_size):
            batch = collate_pairs(mine[start : start + cfg.eval.batch_size], tokenizer.pad_token_id)
            with torch.no_grad():
                chosen, rejected = pair_scores(model, {k: v.to(device) for k, v in batch.items()}, "dpo")
            pairs += [[c, r] for c, r in zip(chosen.tolist(), rejected.tolist(), strict=True)]
        out[split] = shard.gather(pairs, len(examples))
    return out


def heldout_loss(
    model: Any, tokenizer: Any, examples: Sequence[Example], cfg: HoneConfig, kind: str, shard: Shard = ALONE
) -> float:
    """Held-out token-mean loss (pair-mean for dpo/reward). A masked LM's masks are seeded per rank."""
    total, count = shard.sum(
        *summed_loss(model, shard.examples(examples), tokenizer, cfg, kind, seed=cfg.seed + shard.rank * 7919)
    )
    return total / max(count, 1)


def generation_metrics(model: Any, tokenizer: Any, rows: list[Row], fmt: str, cfg: HoneConfig) -> dict[str, float]:
    """Greedy completions of the held-out prompts against their references (`scored_replies`), averaged
    (`reply_metrics`)."""
    return reply_metrics(scored_replies(model, tokenizer, rows, fmt, cfg))


def scored_replies(
    model: Any,
    tokenizer: Any,
    rows: list[Row],
    fmt: str,
    cfg: HoneConfig,
    engine: Engine | None = None,
    shard: Shard = ALONE,
) -> list[dict[str, Any]]:
    """Each held-out prompt's greedy reply, scored against its reference.

    exact_match: the completion equals the reference, ignoring case and whitespace runs (as the RL
                 `exact_match` reward compares them: training/data.py normalize_answer).
    contains:    the completion contains the row's `key_fact` (or else the reference), ignoring case: a
                 right answer inside a sentence still counts.
    """
    rows = rows[: cfg.eval.max_samples] if cfg.eval.max_samples else rows
    completions = greedy_completions(model, tokenizer, rows, fmt, cfg, engine, shard)
    replies = []
    for completion, row in zip(completions, rows, strict=True):
        reference = reference_completion(row, fmt, tokenizer)
        key = str(row.get("key_fact") or reference)
        replies.append(
            {
                "question": _question(row),
                "reply": completion,
                "reference": reference,
                "group": None if row.get("group") is None else str(row["group"]),
                "exact_match": float(normalize_answer(completion) == normalize_answer(reference)),
                "contains": float(normalize_answer(key) in normalize_answer(completion)),
            }
        )
    return replies


def reply_metrics(replies: list[dict[str, Any]]) -> dict[str, float]:
    """Mean exact_match and contains over the replies, and per group (`exact_match/<group>`, ...) for
    replies that have one."""
    out = {metric: _mean([r[metric] for r in replies]) for metric in ("exact_match", "contains")}
    for group in sorted({r["group"] for r in replies if r["group"] is not None}):
        for metric in ("exact_match", "contains"):
            out[f"{metric}/{group}"] = _mean([r[metric] for r in replies if r["group"] == group])
    return out


def _question(row: Row) -> str:
    """What the held-out row asks, for a person reading the replies: its prompt or last user turn."""
    if isinstance(row.get("prompt"), str):
        return str(row["prompt"])
    turns = [m for m in row.get("messages") or row.get("prompt") or [] if isinstance(m, dict) and m.get("role") == "user"]
    return str(turns[-1].get("content", "")) if turns else ""


def _mean(values: list[float]) -> float:
    return sum(values) / max(len(values), 1)


def greedy_completions(
    model: Any,
    tokenizer: Any,
    rows: list[Row],
    fmt: str,
    cfg: HoneConfig,
    engine: Engine | None = None,
    shard: Shard = ALONE,
) -> list[str]:
    """Greedy replies to the rows' prompts from `engine` (a vLLM engine on the same weights), or from the
    HF model itself. On a worker group each rank answers its share and every rank gets all the replies
    back; the ranks generate in step (ZeRO-3 gathers parameters collectively, see HfEngine)."""
    from hone.training.generation import HfEngine, Sampling

    if not rows:
        return []
    special = not tokenizer.chat_template or fmt == "prompt_completion"  # as the training rows were tokenized
    if engine is None:
        engine = HfEngine(model, tokenizer, cfg.eval.batch_size, synced=shard.world > 1)
    engine.special = special
    prompts = [generation_prompt(r, fmt, tokenizer) for r in shard.take(rows, rows[0])]
    return shard.gather([c.text for c in engine.generate(prompts, Sampling(cfg.eval.max_new_tokens))], len(rows))

"""Held-out generation metrics: exact match, the looser `contains`, and per-group scores."""

from types import SimpleNamespace

import torch

from hone.training.config import load_config
from hone.training.evaluate import generation_metrics, scored_replies
from tests.tiny import make_tokenizer


class _Replies:
    """A stand-in model whose greedy reply to each prompt is fixed, to check the scoring alone."""

    device = torch.device("cpu")

    def __init__(self, tokenizer, replies: list[str]):
        self.tokenizer, self.replies, self.calls = tokenizer, replies, 0

    def generate(self, input_ids, **kwargs):
        batch = []
        for row in input_ids:
            reply = self.tokenizer(self.replies[self.calls], add_special_tokens=False)["input_ids"]
            self.calls += 1
            batch.append(row.tolist() + reply)
        width = max(len(b) for b in batch)
        sequences = torch.tensor([b + [self.tokenizer.pad_token_id] * (width - len(b)) for b in batch])
        return SimpleNamespace(sequences=sequences)  # as HF's generate does with return_dict_in_generate


def test_exact_contains_and_groups():
    tok = make_tokenizer()
    rows = [
        {"prompt": "copy a ->", "completion": " a b", "group": "seen"},
        {"prompt": "copy c ->", "completion": " c", "group": "seen", "key_fact": "c"},
        {"prompt": "copy d ->", "completion": " d", "group": "unseen"},
    ]
    replies = ["a b", "the c", "e"]
    cfg = load_config(None, ["model.source=x", "data.train=[x]", "eval.batch_size=2"])
    metrics = generation_metrics(_Replies(tok, replies), tok, rows, "prompt_completion", cfg)
    assert metrics["exact_match"] == 1 / 3 and metrics["contains"] == 2 / 3
    assert metrics["exact_match/seen"] == 0.5 and metrics["contains/seen"] == 1.0
    assert metrics["exact_match/unseen"] == 0.0 and metrics["contains/unseen"] == 0.0


def test_every_reply_is_kept_with_its_question_reference_and_scores():
    tok = make_tokenizer()
    rows = [
        {"messages": [{"role": "user", "content": "copy a ->"}, {"role": "assistant", "content": "a"}], "group": "seen"},
        {"messages": [{"role": "user", "content": "copy b ->"}, {"role": "assistant", "content": "b"}], "key_fact": "b"},
    ]
    cfg = load_config(None, ["model.source=x", "data.train=[x]"])
    replies = scored_replies(_Replies(tok, ["a", "c"]), tok, rows, "messages", cfg)
    assert [(r["question"], r["reply"], r["reference"], r["group"]) for r in replies] == [
        ("copy a ->", "a", "a", "seen"),
        ("copy b ->", "c", "b", None),
    ]
    assert [(r["exact_match"], r["contains"]) for r in replies] == [(1.0, 1.0), (0.0, 0.0)]

"""Weight sync from the policy to the rollout actors, in pieces: what is split is what arrives."""

from __future__ import annotations

import pytest
import torch

from hone.rl.workers import _load_chunks
from hone.training.export import _by_size
from tests.tiny import make_causal_model


def test_parameters_are_grouped_in_order_under_the_byte_limit():
    named = [(f"p{i}", torch.zeros(n)) for i, n in enumerate([10, 10, 30, 5, 100, 1])]
    groups = _by_size(named, limit=4 * 25)
    assert [[n for n, _ in g] for g in groups] == [["p0", "p1"], ["p2"], ["p3"], ["p4"], ["p5"]]
    assert [n for g in groups for n, _ in g] == [n for n, _ in named]  # nothing lost, order kept


def test_a_model_loaded_from_chunks_is_the_sent_model_and_a_missing_piece_is_an_error(tmp_path):
    from transformers import AutoModelForCausalLM

    sent = AutoModelForCausalLM.from_pretrained(make_causal_model(tmp_path / "a", seed=1))
    target = AutoModelForCausalLM.from_pretrained(make_causal_model(tmp_path / "b", seed=2))
    groups = _by_size(list(sent.named_parameters()), limit=4 * 20_000)
    assert len(groups) > 3
    _load_chunks(target, ({n: p.detach().clone() for n, p in g} for g in groups))
    for (name, a), (_, b) in zip(sent.state_dict().items(), target.state_dict().items(), strict=True):
        assert torch.equal(a, b), name

    with pytest.raises(RuntimeError, match="did not send"):
        _load_chunks(target, ({n: p.detach() for n, p in g} for g in groups[1:]))
    with pytest.raises(RuntimeError, match="does not have"):
        _load_chunks(target, iter([{"not.a.weight": torch.zeros(1)}]))

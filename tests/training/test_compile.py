"""train.compile: each transformer block compiled in place gives the eager model's loss and gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from hone.training.batches import collate
from hone.training.config import LoraConfig
from hone.training.forward import forward_loss_sum
from hone.training.models import add_lora, compile_blocks, compiled_blocks
from tests.tiny import make_causal_model


@pytest.fixture(scope="module")
def lora_model(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoModelForCausalLM

    path = make_causal_model(tmp_path_factory.mktemp("llama"))
    return add_lora(AutoModelForCausalLM.from_pretrained(path), LoraConfig(dropout=0.0), "causal").train()


def _batch(length: int, rows: int = 2) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(length)
    examples = []
    for _ in range(rows):
        ids = torch.randint(4, 40, (length,), generator=generator).tolist()
        labels = [-100] * (length // 2) + ids[length // 2 :]  # a prompt, then the answer it trains on
        examples.append({"input_ids": ids, "labels": labels})
    batch = collate(examples, pad_id=0)
    batch.pop("num_real_tokens", None)
    return batch


def _loss_and_grads(model: torch.nn.Module, batch: dict) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss_sum, n = forward_loss_sum(model, batch, "causal")
    (loss_sum / n).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return float(loss_sum.detach() / n), grads


@pytest.mark.slow  # ~30 s of compiling on 2 cores
def test_compiled_blocks_give_the_eager_loss_and_gradients(lora_model):
    from torch._dynamo.utils import counters

    compiled = copy.deepcopy(lora_model)
    assert compile_blocks(compiled) == 2  # LlamaDecoderLayer, from the model's _no_split_modules
    counters.clear()
    for length in (24, 17):  # a second length: torch recompiles for dynamic shapes, still the same math
        batch = _batch(length)
        eager_loss, eager_grads = _loss_and_grads(lora_model, batch)
        loss, grads = _loss_and_grads(compiled, batch)
        assert loss == pytest.approx(eager_loss, rel=1e-5)
        assert grads.keys() == eager_grads.keys() and len(grads) > 0
        for name, grad in grads.items():
            torch.testing.assert_close(grad, eager_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert counters["stats"]["unique_graphs"] >= 1  # the blocks really ran compiled


def test_without_a_cpp_compiler_the_model_trains_uncompiled(lora_model, monkeypatch, capsys):
    model = copy.deepcopy(lora_model)
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CXX", raising=False)
    assert compile_blocks(model) == 0
    assert "train.compile needs a C++ compiler on CPU (install g++); training uncompiled" in capsys.readouterr().out
    assert compiled_blocks(model) == 0

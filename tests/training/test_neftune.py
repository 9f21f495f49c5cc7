"""train.neftune_alpha: noise on the input embeddings while training, of NEFTune's scale, and none when the
model is evaluated or generates."""

from __future__ import annotations

import math

import pytest
import torch

from hone.training.config import ConfigError, LoraConfig, load_config
from hone.training.models import add_embedding_noise, add_lora, neftune_noise
from tests.tiny import make_causal_model


def test_the_noise_has_neftunes_scale():
    embeds = torch.zeros(4, 50, 32)
    noise = neftune_noise(embeds, alpha=5.0)
    bound = 5.0 / math.sqrt(50 * 32)
    assert noise.abs().max() <= bound
    assert noise.abs().max() > 0.9 * bound  # uniform over the whole interval, not a fraction of it
    assert abs(noise.std().item() - bound / math.sqrt(3)) < 0.05 * bound  # a uniform's standard deviation


def test_noise_only_while_training(tmp_path):
    from transformers import AutoModelForCausalLM

    model = add_lora(AutoModelForCausalLM.from_pretrained(make_causal_model(tmp_path)), LoraConfig(), "causal")
    ids = torch.randint(4, 40, (2, 12))
    embeddings = model.get_input_embeddings()
    clean = embeddings(ids)
    add_embedding_noise(model, alpha=10.0)
    model.train()
    noisy = embeddings(ids)
    bound = 10.0 / math.sqrt(12 * clean.shape[-1])
    assert 0 < (noisy - clean).abs().max() <= bound + 1e-6
    model.eval()
    assert torch.equal(embeddings(ids), clean)
    assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)


def test_a_negative_alpha_or_one_for_rl_is_refused():
    with pytest.raises(ConfigError, match="train.neftune_alpha"):
        load_config(None, ["model.source=/m", "data.train=[/d.txt]", "train.neftune_alpha=-1"])
    rl = ["mode=rl", "rl.rewards=[{type: exact_match, field: answer}]"]
    with pytest.raises(ConfigError, match="without NEFTune; remove train.neftune_alpha"):
        load_config(None, ["model.source=/m", "data.train=[/d.jsonl]", "train.neftune_alpha=5", *rl])

"""The reward model built from a causal base: one score, pad token known, the same head every time."""

import torch

from hone.training.config import LoraConfig, ModelConfig
from hone.training.models import add_lora, load_model


def test_reward_head_is_the_same_in_every_process_that_builds_it(assets):
    # eval-before, every worker and the exporter each build it: they must start from the same weights.
    source = str(assets["llama"])
    torch.manual_seed(2)
    expected = torch.rand(1)
    torch.manual_seed(1)
    first = load_model(ModelConfig(source=source), source, "reward")
    torch.manual_seed(2)
    second = load_model(ModelConfig(source=source), source, "reward")
    assert first.config.num_labels == 1 and first.config.pad_token_id == 0
    assert torch.equal(first.score.weight, second.score.weight)
    assert torch.equal(torch.rand(1), expected)  # the caller's random stream is left as it was


def test_lora_reward_model_trains_the_score_head(assets):
    source = str(assets["llama"])
    model = add_lora(load_model(ModelConfig(source=source), source, "reward"), LoraConfig(rank=4), "reward")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("score" in n for n in trainable) and any("lora_A" in n for n in trainable)

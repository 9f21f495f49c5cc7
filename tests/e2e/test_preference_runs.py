"""Whole dpo and reward runs on one local Ray cluster: real Ray Train, real DeepSpeed, a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from hone.cluster.run import run
from hone.training.config import load_config
from hone.training.files import read_jsonl
from tests.tiny import preference_rows, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pairs")
    return {
        # dpo: the right copy against a wrong one. reward: the right copy against words, off the task.
        "dpo": write_jsonl(folder / "copy.jsonl", preference_rows(240, seed=5)),
        "reward": write_jsonl(folder / "off_topic.jsonl", preference_rows(240, seed=5, off_topic=True)),
    }


def preference_overrides(assets: dict[str, Path], pairs: dict[str, Path], out: Path, mode: str, *extra: str) -> list[str]:
    return [
        f"mode={mode}",
        f"output_dir={out}",
        f"model.source={assets['llama']}",
        f"data.train=[{pairs[mode]}]",
        "data.max_seq_len=32",
        "optim.lr=3e-3",
        "optim.warmup_steps=2",
        "train.max_steps=30",
        "train.micro_batch_per_device=8",
        "eval.batch_size=16",
        *extra,
    ]


def test_lora_reward_model_learns_to_rank_pairs_and_exports_a_classifier(assets, pairs, tmp_path):
    out = tmp_path / "reward"
    # LoRA: the adapter alone cannot learn the new score head; peft's SEQ_CLS task trains it in full.
    summary = run(load_config(None, preference_overrides(assets, pairs, out, "reward", "lora.enabled=true", "lora.rank=8")))

    before, after = summary["eval"]["before"], summary["eval"]["after"]
    print(f"reward: before {before} after {after}")
    assert set(before) == set(after) == {"loss", "accuracy", "margin"}
    assert after["accuracy"] >= 0.95 and after["accuracy"] > before["accuracy"], (before, after)
    assert after["loss"] < before["loss"] / 4, (before, after)
    assert (out / "model" / "adapter" / "adapter_config.json").exists()
    assert summary["mode"] == "reward" and summary["objective"] == "reward"

    # The export is a plain sequence classifier with one score: usable as an RL reward model as is.
    model = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    assert model.config.num_labels == 1 and tokenizer.pad_token is not None
    assert model.config.pad_token_id == tokenizer.pad_token_id
    texts = ["copy a b -> a b[EOS]", "copy a b -> the cat[EOS]"]  # as trained: prompt + reply + EOS
    with torch.no_grad():
        scores = model(**tokenizer(texts, return_tensors="pt", padding=True)).logits[:, 0]
    assert scores[0] > scores[1]


def test_dpo_run_raises_heldout_reward_accuracy(assets, pairs, tmp_path):
    out = tmp_path / "dpo"
    summary = run(load_config(None, preference_overrides(assets, pairs, out, "dpo", "dpo.beta=0.1", "eval.every_steps=10")))

    before, after = summary["eval"]["before"], summary["eval"]["after"]
    print(f"dpo: before {before} after {after}")
    assert set(before) == set(after) == {"loss", "reward_accuracy", "reward_margin"}
    # Before training the policy is the reference: every margin is exactly 0, the loss exactly log 2.
    assert before["reward_accuracy"] == 0.0 and before["reward_margin"] == 0.0
    assert before["loss"] == pytest.approx(math.log(2.0), abs=1e-6)
    assert after["reward_accuracy"] >= 0.8 and after["loss"] < before["loss"] - 0.05, (before, after)
    assert summary["mode"] == "dpo" and summary["objective"] == "causal"

    cached = json.loads((out / "reference_logps.json").read_text())
    assert len(cached["train"]) == summary["data"]["train"]["examples"] and len(cached["eval"]) == 24
    lines = read_jsonl(out / "metrics.jsonl")
    assert lines[0]["loss"] == pytest.approx(math.log(2.0), abs=1e-3)  # step 1 trains from policy == reference
    assert "eval_loss" in lines[9]
    AutoModelForCausalLM.from_pretrained(out / "model")


def test_lora_dpo_under_zero3_on_two_workers(assets, pairs, tmp_path, capsys):
    out = tmp_path / "dpo-lora-z3"
    # Adapters learn the copy task slowly; the off-topic pairs and a larger beta keep this test short.
    extra = ("lora.enabled=true", "lora.rank=8", "optim.lr=1e-2", "deepspeed.zero_stage=3", "scaling.num_workers=2",
             "deepspeed.param_persistence_threshold=0")  # fmt: skip
    tuned = (f"data.train=[{pairs['reward']}]", "dpo.beta=0.5", "train.micro_batch_per_device=4", "train.max_steps=20")
    summary = run(load_config(None, preference_overrides(assets, pairs, out, "dpo", *extra, *tuned)))

    before, after = summary["eval"]["before"], summary["eval"]["after"]
    print(f"dpo lora zero3: before {before} after {after}")
    assert before["reward_accuracy"] == 0.0 and before["loss"] == pytest.approx(math.log(2.0), abs=1e-6)
    assert after["reward_accuracy"] >= 0.7 and after["loss"] < before["loss"] - 0.1, (before, after)
    assert {w["rank"] for w in summary["workers"]} == {0, 1}
    assert all(w["zero_stage"] == 3 for w in summary["workers"])
    assert (out / "model" / "adapter" / "adapter_config.json").exists()
    # the reference log-probs and both evaluations ran with every parameter partitioned over the two workers
    said = [x for x in capsys.readouterr().out.splitlines() if " on 2 worker(s) in " in x]
    assert [x.split(" on ")[0] for x in said] == [
        "hone: computed them",
        "hone: evaluated the base model",
        "hone: evaluated the tuned model",
    ]
    assert all(
        x.endswith(" parameters partitioned") and x.split(", ")[-1].split()[0] == x.split(", ")[-1].split()[2] for x in said
    )

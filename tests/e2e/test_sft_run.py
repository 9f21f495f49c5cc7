"""Whole runs on one local Ray cluster: real Ray Train, real DeepSpeed, tiny models."""

from __future__ import annotations

import json
import time

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

from hone.cluster.connect import PlacementError
from hone.cluster.run import run
from hone.cluster.rundir import RunDirError
from hone.training.config import load_config
from hone.training.files import read_jsonl
from tests.conftest import sft_overrides
from tests.tiny import copy_rows, write_jsonl
from tests.wandb_files import read_run

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def test_sft_run_learns_and_writes_the_run_directory(assets, tmp_path):
    out = tmp_path / "run"
    summary = run(load_config(None, sft_overrides(assets, out, "eval.every_steps=10", "checkpoint.every_steps=10")))

    assert summary["eval"]["after"]["loss"] < summary["eval"]["before"]["loss"] - 0.5
    assert set(summary["eval"]["before"]) == set(summary["eval"]["after"]) == {"loss", "exact_match", "contains"}
    assert summary["mode"] == "sft" and summary["steps"] == 20 and summary["tokens_per_s"] > 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 3e-3 and saved["train"]["max_steps"] == 20 and saved["data"]["max_seq_len"] == 32
    lines = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in lines] == list(range(1, 21))
    assert {"loss", "lr", "tokens_per_s", "real_tokens_per_s"} <= set(lines[0])
    assert "eval_loss" in lines[9]
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_0000010", "step_0000020"]
    assert json.loads((out / "summary.json").read_text())["model_path"] == str(out / "model")

    model = AutoModelForCausalLM.from_pretrained(out / "model")  # plain transformers, no hone code
    assert sum(p.numel() for p in model.parameters()) > 0


def test_compiled_run_of_rows_packed_behind_their_system_prompt_learns(assets, tmp_path):
    """Compiled blocks, packing, and a prompt prefix every row shares (as a chat template's system prompt
    is), packed once per sequence: a real DeepSpeed run on it learns the task."""
    rows = [{**r, "prompt": f"a b c d e f g h {r['prompt']}"} for r in copy_rows(240)]
    data = write_jsonl(tmp_path / "system_prompted.jsonl", rows)
    out = tmp_path / "run"
    summary = run(
        load_config(
            None,
            sft_overrides(assets, out, "train.compile=true", "data.packing=true", f"data.train=[{data}]", "data.max_seq_len=48"),
        )
    )
    assert summary["workers"][0]["compiled_blocks"] == 2  # the tiny Llama's two decoder layers
    assert summary["data"]["shared_prefix_tokens"] == 9  # "a ... h copy"
    assert summary["eval"]["after"]["loss"] < summary["eval"]["before"]["loss"] - 0.5


def test_rerunning_a_finished_run_does_not_train_again(assets, tmp_path):
    out = tmp_path / "run"
    first = run(load_config(None, sft_overrides(assets, out, "train.max_steps=4")))
    mtime = (out / "model" / "config.json").stat().st_mtime
    again = run(load_config(None, sft_overrides(assets, out, "train.max_steps=4")))
    assert again == first and (out / "model" / "config.json").stat().st_mtime == mtime


def test_an_output_dir_holding_a_different_run_is_refused_untouched(assets, tmp_path):
    out = tmp_path / "run"
    run(load_config(None, sft_overrides(assets, out, "train.max_steps=4")))
    before = {p: p.stat().st_mtime for p in out.rglob("*")}
    with pytest.raises(RunDirError, match=r"holds a different run \(config differs in: optim\.lr\).*overwrite=true"):
        run(load_config(None, sft_overrides(assets, out, "train.max_steps=4", "optim.lr=1e-3")))
    assert {p: p.stat().st_mtime for p in out.rglob("*")} == before
    replaced = run(load_config(None, sft_overrides(assets, out, "train.max_steps=4", "optim.lr=1e-3", "overwrite=true")))
    assert replaced["steps"] == 4 and yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 1e-3


def test_lora_export_holds_adapter_and_merged_weights(assets, tmp_path):
    out = tmp_path / "lora"
    summary = run(
        load_config(None, sft_overrides(assets, out, "lora.enabled=true", "lora.rank=8", "optim.lr=1e-2", "data.packing=true"))
    )
    assert summary["eval"]["after"]["loss"] < summary["eval"]["before"]["loss"]
    assert (out / "model" / "adapter" / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out / "model")
    base = AutoModelForCausalLM.from_pretrained(assets["llama"])
    assert not any("lora" in name for name in merged.state_dict())
    changed = [n for n, p in merged.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert any("q_proj" in n for n in changed)


def test_masked_lm_pretraining_lowers_masked_token_loss(assets, tmp_path):
    out = tmp_path / "mlm"
    overrides = [
        "mode=pretrain",
        f"output_dir={out}",
        f"model.source={assets['bert']}",
        f"data.train=[{assets['text']}]",
        "data.max_seq_len=64",
        "optim.lr=2e-3",
        "train.max_steps=30",
        "train.micro_batch_per_device=8",
        "data.mlm_probability=0.25",
    ]
    summary = run(load_config(None, overrides))
    assert summary["objective"] == "masked"
    before, after = summary["eval"]["before"], summary["eval"]["after"]
    assert set(before) == {"loss", "perplexity"}
    assert after["loss"] < before["loss"] - 0.5, (before, after)
    AutoModelForMaskedLM.from_pretrained(out / "model")


def test_more_workers_than_the_cluster_has_fails_at_once(assets, tmp_path):
    with pytest.raises(PlacementError, match=r"num_workers=16 needs more than the cluster has \(CPU: need 16, cluster has 4\)"):
        run(
            load_config(None, sft_overrides(assets, tmp_path / "big", "scaling.num_workers=16", "train.micro_batch_per_device=1"))
        )
    assert not (tmp_path / "big").exists()  # nothing written: fixing num_workers and rerunning just works


def test_unplaceable_strategy_fails_within_the_timeout(assets, tmp_path):
    started = time.monotonic()
    overrides = sft_overrides(assets, tmp_path / "spread", "scaling.num_workers=2", "scaling.placement_strategy=STRICT_SPREAD")
    with pytest.raises(PlacementError, match=r"could not place 2 workers .* STRICT_SPREAD within 3 s"):
        run(load_config(None, [*overrides, "scaling.placement_timeout_s=3"]))
    assert time.monotonic() - started < 30


def test_wandb_offline_run_files(assets, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    out = tmp_path / "tracked"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    extra = ("train.max_steps=4", "tracking.wandb.project=hone-tests", "tracking.wandb.tags=[ci]")
    more = ("tracking.tensorboard.enabled=true", "tracking.mlflow.experiment=hone-tests")  # beside W&B, the same
    summary = run(load_config(None, sft_overrides(assets, out, *extra, *more)))
    [offline] = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    logged = read_run(offline)
    assert logged["config"]["optim"]["lr"] == 3e-3 and logged["config"]["_tags"] == ["ci"]
    assert [h["_step"] for h in logged["history"] if "train/loss" in h] == [1, 2, 3, 4]
    assert logged["summary"]["eval/before/loss"] == summary["eval"]["before"]["loss"]
    assert logged["summary"]["eval/after/exact_match"] == summary["eval"]["after"]["exact_match"]
    assert logged["summary"]["eval/before_after/_type"] == "table-file"

    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert events.Scalars("eval/after/loss")[0].value == pytest.approx(summary["eval"]["after"]["loss"])
    client = MlflowClient((tmp_path / "mlruns").as_uri())
    [tracked] = client.search_runs([client.get_experiment_by_name("hone-tests").experiment_id])
    assert [m.step for m in client.get_metric_history(tracked.info.run_id, "train/loss")] == [1, 2, 3, 4]
    assert tracked.data.metrics["eval/before/loss"] == pytest.approx(summary["eval"]["before"]["loss"])

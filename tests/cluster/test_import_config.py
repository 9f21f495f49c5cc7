"""`hone import-config` turns a TRL and an Axolotl config (written from their docs' examples) into hone
configs that `hone validate` accepts; what has no hone equivalent is listed, never dropped silently; a
TRL/Axolotl name inside a hone config gets its hone name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hone.cluster.cli import main
from hone.training.config import ConfigError, load_config
from tests.tiny import copy_rows, write_jsonl

PEERS = Path(__file__).parent.parent / "peer_configs"


@pytest.mark.parametrize(
    ("file", "expected", "not_carried"),
    [
        (
            "trl_sft.yaml",
            {"optim.lr": 2e-4, "train.micro_batch_per_device": 2, "train.grad_accum": 8, "lora.rank": 32, "data.packing": True},
            {"warmup_ratio"},
        ),
        (
            "axolotl_lora.yml",
            {
                "optim.lr": 2e-4,
                "train.micro_batch_per_device": 2,
                "data.max_seq_len": 2048,
                "lora.enabled": True,
                "train.neftune_alpha": 5,
                "data.eval": 0.1,
            },
            {"optimizer", "special_tokens", "pad_to_sequence_len", "eval_sample_packing", "evals_per_epoch", "saves_per_epoch"},
        ),
    ],
)
def test_a_peer_config_imports_and_validates(tmp_path, assets, capsys, file, expected, not_carried):
    out = tmp_path / "hone.yaml"
    assert main(["import-config", str(PEERS / file), "-o", str(out)]) == 0
    said = capsys.readouterr().err
    listed = {line.split(": ")[2] for line in said.splitlines() if line.startswith("hone: not carried over: ")}
    assert listed == not_carried, said
    assert "data.train names" in said  # a hub dataset id: said, and how to give a local file instead
    raw = yaml.safe_load(out.read_text())
    for dotted, value in expected.items():
        section, _, key = dotted.rpartition(".")
        assert (raw[section] if section else raw)[key] == value, dotted
    assert all(f"#   {key}:" in out.read_text() for key in not_carried)  # kept in the file too

    data = write_jsonl(tmp_path / "local.jsonl", copy_rows(400))
    local = [f"model.source={assets['llama']}", f"data.train=[{data}]", "data.max_seq_len=64", f"output_dir={tmp_path / 'run'}"]
    local += [f"data.cache_dir={tmp_path / 'cache'}", "model.attn_implementation=auto"]  # no flash-attention off GPUs
    assert main(["validate", str(out), *local]) == 0, capsys.readouterr().err


def test_a_peer_name_in_a_hone_config_is_answered_with_the_hone_name():
    base = ["model.source=x", "data.train=[x]"]
    for name, hone in (("learning_rate", "optim.lr"), ("per_device_train_batch_size", "train.micro_batch_per_device"),
                       ("gradient_accumulation_steps", "train.grad_accum"), ("lora_r", "lora.rank"),
                       ("num_train_epochs", "train.num_epochs"), ("micro_batch_size", "train.micro_batch_per_device")):  # fmt: skip
        with pytest.raises(ConfigError, match=rf"unknown config key {name}; did you mean {hone}\?"):
            load_config(None, [*base, f"{name}=1"])
    with pytest.raises(ConfigError, match=r"unknown config key train\.learning_rate; did you mean optim\.lr\?"):
        load_config(None, [*base, "train.learning_rate=1"])


def test_an_axolotl_dataset_split_and_subset_become_a_hone_source():
    from hone.training.config import DataSource
    from hone.training.peer_names import translate

    axolotl = {
        "datasets": [
            {"path": "org/a", "type": "alpaca", "name": "en", "split": "train"},
            {"path": "b.jsonl", "type": "chat_template"},
        ]
    }
    config, unmapped = translate(axolotl, "axolotl")
    assert config["data"]["train"] == [{"path": "org/a", "split": "train", "subset": "en"}, "b.jsonl"] and not unmapped
    cfg = load_config(
        None, ["model.source=x", f"data.train={yaml.safe_dump(config['data']['train'], default_flow_style=True).strip()}"]
    )
    assert cfg.data.train[0] == DataSource(path="org/a", split="train", subset="en")

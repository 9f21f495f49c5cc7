"""`hone validate` prints the data statistics; user errors exit 1 with the message, not a traceback."""

import json
from pathlib import Path

from hone.cluster.cli import main
from hone.training.config import HoneConfig, config_fields
from tests.conftest import sft_overrides

ROOT = Path(__file__).resolve().parents[2]


def test_validate_prints_resolved_config_and_statistics(assets, tmp_path, capsys):
    rows = [{"prompt": "copy " + "a " * 30 + "->", "completion": " a"}] + [{"prompt": "copy b ->", "completion": " b"}] * 39
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "c.yaml").write_text("{}\n")
    args = sft_overrides(assets, tmp_path / "out", "train.max_steps=0", "train.grad_accum=2", "data.eval=0.25")
    args = [a for a in args if not a.startswith("data.train")] + [f"data.train=[{data}]", "data.max_seq_len=16"]
    args += ["train.micro_batch_per_device=4"]
    assert main(["validate", str(tmp_path / "c.yaml"), *args]) == 0
    out = capsys.readouterr().out
    assert "# resolved config" in out and "max_seq_len: 16" in out
    assert "format:           prompt_completion" in out
    assert "train rows:       30" in out and "eval rows:       10" in out
    assert "tokens (" in out and "trained on)" in out
    # The one over-long row lands in train or eval; either way it is reported as dropped, with the reason.
    assert out.count("dropped: 1 (prompt fills max_seq_len, no completion token left)") == 1
    assert "global batch:     8 = micro_batch_per_device 4 x grad_accum 2 x num_workers 1" in out
    assert "steps per epoch:  3" in out and "total steps:      3 (1 epochs)" in out
    assert not (tmp_path / "out").exists()  # validate touches no run dir


def test_validate_says_how_many_prompt_tokens_packing_shares_and_the_switch_turns_it_off(assets, tmp_path, capsys):
    rows = [{"prompt": f"a b c d e f g h copy {x} ->", "completion": f" {x}"} for x in "abcdefghij" * 4]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "c.yaml").write_text("{}\n")
    args = [a for a in sft_overrides(assets, tmp_path / "out", "data.packing=true") if not a.startswith("data.train")]
    args += [f"data.train=[{data}]"]
    assert main(["validate", str(tmp_path / "c.yaml"), *args]) == 0
    assert "training sequences, the 9 prompt tokens every row starts with once per sequence" in capsys.readouterr().out
    assert main(["validate", str(tmp_path / "c.yaml"), *args, "data.share_prefix=false"]) == 0
    assert "prompt tokens every row starts with" not in capsys.readouterr().out


def test_user_errors_exit_1_with_the_message(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("mode: sft\ntrain: {micro_batch_per_device: 0}\nmodel: {source: /m}\ndata: {train: [x]}\n")
    assert main(["validate", str(tmp_path / "c.yaml")]) == 1
    assert "hone: error: train.micro_batch_per_device=0 is invalid" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "c.yaml"), "train.micro_batch_per_device=2"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_the_config_reference_documents_every_config_field():
    reference = (ROOT / "docs" / "config.md").read_text()
    missing = [key for key in config_fields(HoneConfig) if f"| `{key}` |" not in reference]
    assert not missing, f"docs/config.md lacks {missing}"

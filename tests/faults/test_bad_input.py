"""Bad input gets one clear line (file, row or field, and the fix) and exit status 1: never a traceback."""

import time
from pathlib import Path

import pytest

from hone.cluster.cli import main
from hone.cluster.connect import RayStartError, ray_session
from hone.training.config import ConfigError, DataConfig, load_config
from hone.training.data import DataError, load_rows, read_dataset
from hone.training.models import ModelSourceError
from hone.training.prepare import prepare
from tests.tiny import make_causal_model

COMMANDS = (
    ["validate"],
    ["run"],
    ["tune"],
    ["submit", "--address", "http://127.0.0.1:9"],
    ["k8s", "render"],
)


def _fails_with(capsys, argv: list[str], expected: str) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("hone: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err, err


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_malformed_yaml_is_one_line_on_every_command(tmp_path, capsys, command):
    path = tmp_path / "broken.yaml"
    path.write_text("data: {train: [a.jsonl}\n")
    argv = [*command[:2], str(path), *command[2:]] if command[0] == "k8s" else [command[0], str(path), *command[1:]]
    _fails_with(capsys, argv, f"{path} is not valid YAML at line 1")


def test_duplicate_keys_are_refused_naming_both_lines(tmp_path, capsys):
    path = tmp_path / "twice.yaml"
    path.write_text("optim: {lr: 1.0e-4}\nmodel: {source: org/m}\noptim: {warmup_steps: 3}\n")
    _fails_with(capsys, ["validate", str(path)], "key 'optim' appears twice (lines 1 and 3); merge them")


def test_an_anchor_bomb_and_absurd_nesting_are_refused_before_expanding(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    levels = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]'] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]" for i in range(8)
    ]
    bomb.write_text("tune:\n  space:\n    optim.lr:\n      values: *i\n" + "\n".join(levels) + "\n")
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"aliases \(\*name\) are not allowed"):
        load_config(bomb)
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 20_000 + "]" * 20_000 + "\n")
    with pytest.raises(ConfigError, match="nested more than 64 levels deep"):
        load_config(deep)
    assert time.monotonic() - started < 5


def test_a_config_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("output_dir: runs/caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml is not UTF-8 text \(byte 0xe9 at offset 20\)"):
        load_config(path)


def test_data_files_a_user_may_have(tmp_path):
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"prompt": "a", "completion": "b"}\n')  # Windows tools write a BOM: accepted
    assert load_rows([str(bom)])[0]["prompt"] == "a"
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"text": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.jsonl: not UTF-8 text \(byte 0xe9 at offset 13\)"):
        load_rows([str(latin)])
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Handbook\n")
    (docs / "logo.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    # A text file is read when its text is first asked for: the checks of read_dataset, before any tokenizing.
    with pytest.raises(DataError, match=r"logo.txt: (not UTF-8 text|holds NUL bytes)"):
        read_dataset(DataConfig(train=[str(docs)]), "pretrain", seed=0)
    for suffix in (".csv", ".parquet"):
        empty = tmp_path / f"empty{suffix}"
        empty.write_bytes(b"")
        with pytest.raises(DataError, match=rf"empty{suffix}: the file is empty \(0 bytes\)"):
            load_rows([str(empty)])
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"broken.parquet: not a readable parquet file"):
        load_rows([str(broken)])


def test_an_unknown_message_role_is_named_with_its_row(tmp_path, capsys):
    rows = tmp_path / "chat.jsonl"
    rows.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hello"}]}\n')
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {{source: org/m}}\ndata: {{train: [{rows}]}}\noutput_dir: {tmp_path / 'run'}\n")
    _fails_with(capsys, ["validate", str(config)], "chat.jsonl:1: 'messages' has a message with role 'bot'; use one of")


def test_max_seq_len_past_the_models_positions_is_refused(tmp_path):
    model = make_causal_model(tmp_path / "llama", max_positions=64)
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "a", "completion": "b"}\n' * 4)
    cfg = load_config(None, [f"model.source={model}", f"data.train=[{rows}]", "data.max_seq_len=1000000000000"])
    with pytest.raises(ModelSourceError, match=r"data.max_seq_len=1000000000000 is longer than the model reads \(64 positions"):
        prepare(cfg)


def test_a_hone_ray_tmp_too_long_for_rays_sockets_is_named_at_once(tmp_path, monkeypatch):
    long = tmp_path / ("x" * 40)
    monkeypatch.setenv("HONE_RAY_TMP", str(long))
    with pytest.raises(RayStartError, match=r"HONE_RAY_TMP=.* characters; .*at most 21 characters"):
        with ray_session(None):
            pytest.fail("started Ray")
    assert not Path(long).exists()

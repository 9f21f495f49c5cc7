"""What leaves this machine is what the config names, and the cluster token only goes where it should."""

import time
from pathlib import Path

import pytest

from hone.cluster.jobs import JobsError, connect, read_token
from hone.cluster.submit import SHIPPED, _Shipment, ship_config
from hone.training.config import load_config


def _docs(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    (docs / "chapters").mkdir(parents=True)
    (docs / "ch1.md").write_text("# Chapter 1\n")
    (docs / "chapters" / "ch2.txt").write_text("Chapter 2\n")
    (docs / ".env").write_text("API_KEY=secret\n")
    (docs / ".git").mkdir()
    (docs / ".git" / "notes.md").write_text("not data\n")
    (docs / "build.sh").write_text("not data either\n")
    return docs


def test_submit_ships_the_files_the_run_reads_and_nothing_else(tmp_path, capsys):
    docs = _docs(tmp_path)
    cfg = load_config(None, ["mode=pretrain", "model.source=org/m", f"data.train=[{docs}]", f"output_dir={tmp_path / 'run'}"])
    shipment = _Shipment(shared=[])
    try:
        raw = ship_config(cfg, shipment)
        shipment.copy()
        shipped = sorted(str(p.relative_to(shipment.root)) for p in shipment.root.rglob("*") if p.is_file())
        assert raw["data"]["train"] == [f"{SHIPPED}/0-docs"]
        assert shipped == [f"{SHIPPED}/0-docs/ch1.md", f"{SHIPPED}/0-docs/chapters/ch2.txt"]
        manifest = shipment.manifest()
        assert manifest.startswith("hone: shipping 2 local files") and "0-docs/ch1.md" in manifest
    finally:
        shipment.remove()


def test_a_symlink_leading_out_of_a_data_folder_is_refused_by_name(tmp_path):
    docs = _docs(tmp_path)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "id_rsa.md").write_text("-----BEGIN KEY-----\n")
    (docs / "notes.md").symlink_to(tmp_path / "outside" / "id_rsa.md")
    cfg = load_config(None, ["mode=pretrain", "model.source=org/m", f"data.train=[{docs}]", f"output_dir={tmp_path / 'run'}"])
    shipment = _Shipment(shared=[])
    try:
        with pytest.raises(JobsError, match=r"data.train\[0\]: .*notes.md is a symlink to .*id_rsa.md, outside the data folder"):
            ship_config(cfg, shipment)
    finally:
        shipment.remove()


def test_the_token_never_goes_in_clear_text_to_another_host(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "s3cret")
    started = time.monotonic()
    with pytest.raises(JobsError, match=r"refusing to send the cluster token in clear text to http://10\.9\.8\.7:8265") as err:
        connect("http://10.9.8.7:8265", None)
    assert time.monotonic() - started < 1  # refused before any request was made
    assert "s3cret" not in str(err.value)


def test_the_local_clusters_token_is_not_offered_to_a_remote_address(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("local-cluster-token\n")
    assert read_token(None) == ("local-cluster-token", "~/.ray/auth_token")  # for a tunnel to 127.0.0.1
    assert read_token(None, remote=True) == (None, "")
    assert read_token(str(tmp_path / ".ray" / "auth_token"), remote=True)[0] == "local-cluster-token"  # named: used


def test_the_token_ray_writes_for_the_embedded_cluster_becomes_owner_only(monkeypatch, tmp_path):
    from hone.cluster.connect import _private_token

    token = tmp_path / "auth_token"
    token.write_text("generated-by-ray")
    token.chmod(0o644)  # what Ray 2.60 leaves: any user of the machine could read it and run code as this one
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    _private_token()
    assert token.stat().st_mode & 0o777 == 0o600 and token.read_text() == "generated-by-ray"

"""A local model is known by its contents, not its path: the caches of what it generated (synthesis, replay
answers, the GGUF conversion) follow the model when it is copied and drop it when it is rewritten in place."""

import shutil

import pytest

from hone.training import models
from hone.training.models import file_sha256, model_identity


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "CACHE_DIR", tmp_path / "hone-cache")


def _model_dir(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llama"}')
    (path / "model.safetensors").write_bytes(b"\x00\x01weights" * 1000)
    return path


def test_a_copy_elsewhere_is_the_same_model_and_a_rewrite_in_place_is_not(tmp_path):
    first = model_identity(str(_model_dir(tmp_path / "a")))
    assert first.startswith("sha256:")
    copy = shutil.copytree(tmp_path / "a", tmp_path / "elsewhere" / "b")
    assert model_identity(str(copy)) == first

    (copy / "model.safetensors").write_bytes(b"\x00\x02weights" * 1000)  # same size, new weights
    assert model_identity(str(copy)) != first
    rewritten = model_identity(str(copy))
    (copy / "model.safetensors").rename(copy / "other.safetensors")
    assert model_identity(str(copy)) not in (first, rewritten)  # a file's name is part of the model


def test_hub_download_metadata_in_dot_folders_does_not_count(tmp_path):
    model = _model_dir(tmp_path / "m")
    before = model_identity(str(model))
    (model / ".cache" / "huggingface").mkdir(parents=True)
    (model / ".cache" / "huggingface" / "download.lock").write_text("2026-12-06T05:00")
    assert model_identity(str(model)) == before


def test_a_single_file_is_known_by_its_bytes_and_read_once(tmp_path):
    one, two = tmp_path / "x" / "m.gguf", tmp_path / "y" / "m.gguf"
    for path in (one, two):
        path.parent.mkdir()
        path.write_bytes(b"GGUF" + b"\x07" * 5000)
    assert model_identity(str(one)) == model_identity(str(two)) == f"sha256:{file_sha256(one)}"
    memos = list((models.CACHE_DIR / "sha256").iterdir())
    assert len(memos) == 2  # one per path, size and mtime
    for memo in memos:
        memo.write_text("remembered")
    assert file_sha256(one) == "remembered"  # read from the memo, not from the file again
    one.write_bytes(b"GGUF" + b"\x08" * 6000)  # rewritten: new size and mtime, read again
    assert file_sha256(one) not in ("remembered", file_sha256(two))


def test_hub_ids_and_models_not_written_yet_are_named_as_given(tmp_path):
    assert model_identity("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    later = tmp_path / "runs" / "2-pretrain" / "model"
    assert model_identity(str(later)) == str(later)

"""Path fields are declared once (training/config.py path_field) and every command that moves a config
elsewhere walks that declaration: a new path field that resolve, `hone submit` or `hone k8s render` did
not handle would fail here."""

import dataclasses
import re
import typing
from pathlib import Path

from hone.cluster.k8s import Bundle
from hone.cluster.k8s import ship_config as k8s_ship
from hone.cluster.k8s_manifests import RenderOptions
from hone.cluster.pipeline import AnswerEval, PipelineFile
from hone.cluster.submit import _Shipment
from hone.cluster.submit import ship_config as submit_ship
from hone.training.config import HoneConfig, PathKind, load_config, map_paths, to_dict

# Names that hold a path wherever they appear; a field named so must be declared with path_field.
PATH_NAME = re.compile(r"(^|_)(source|path|dir|file|train|eval|data)$")


def _fields(cls: type, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        options = typing.get_args(hint) or (hint,)
        sections = [
            o
            for o in (*options, *(typing.get_args(o)[0] for o in options if typing.get_origin(o) is list))
            if dataclasses.is_dataclass(o)
        ]
        for section in sections:
            yield from _fields(section, f"{prefix}{f.name}.")
        if not sections:
            yield f"{prefix}{f.name}", f


def test_every_field_named_like_a_path_is_declared_a_path():
    for cls in (HoneConfig, PipelineFile):
        for key, f in _fields(cls):
            if PATH_NAME.search(f.name) and f.name not in ("defaults", "stages"):
                assert f.metadata.get("path"), f"{cls.__name__}.{key} looks like a path: declare it with path_field(...)"


def _local_paths(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    (tmp_path / "eval.jsonl").write_text('{"prompt": "c", "completion": "d"}\n')
    (tmp_path / "rewards").mkdir()
    (tmp_path / "rewards" / "mine.py").write_text("def score(prompts, completions, **fields):\n    return [0.0] * len(prompts)\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    return {"data": str(tmp_path / "train.jsonl"), "model": str(tmp_path / "model"), "module": str(tmp_path / "rewards")}


def _configs(tmp_path: Path, model: str) -> list[HoneConfig]:
    """Between them, a value in every path field there is."""
    local = _local_paths(tmp_path)
    common = [f"data.train=[{local['data']}]", f"data.eval=[{tmp_path / 'eval.jsonl'}]", f"output_dir={tmp_path / 'run'}"]
    rewards = (
        f"rl.rewards=[{{type: function, function: 'mine:score', path: {local['module']}}}, {{type: model, source: {model}}}]"
    )
    return [
        load_config(None, [*common, "mode=rl", f"model.source={model}", rewards, "train.micro_batch_per_device=1"]),
        load_config(None, [*common, "mode=sft", f"model.source={model}", "scaling.storage_path=/mnt/runs/ckpt"]),
    ]


def _visited(raw: dict) -> list[tuple[str, typing.Any, str]]:
    seen: list[tuple[str, typing.Any, str]] = []
    map_paths(raw, lambda key, value, kind, _: seen.append((key, value, kind)) or value)
    return seen


def test_every_kind_of_path_is_covered_by_these_configs(tmp_path):
    kinds = {kind for cfg in _configs(tmp_path, str(tmp_path / "model")) for _, value, kind in _visited(to_dict(cfg)) if value}
    assert kinds == set(typing.get_args(PathKind)), "a new kind of path field: add it to _configs and ship it"


def test_submit_ships_every_local_path(tmp_path):
    for cfg in _configs(tmp_path, str(tmp_path / "model")):
        shipment = _Shipment(shared=[])
        try:
            shipped = submit_ship(cfg, shipment)
        finally:
            shipment.remove()
        for key, value, kind in _visited(shipped):
            if kind in ("data", "model", "module") and isinstance(value, str):
                assert not value.startswith(str(tmp_path)), f"{key}={value}: a local path left in the shipped config"


def test_k8s_render_ships_every_local_path_or_puts_it_on_the_volume(tmp_path):
    opts = RenderOptions()
    for cfg in _configs(tmp_path, "/mnt/runs/models/base"):  # a local model cannot travel in a ConfigMap
        shipped = k8s_ship(cfg, Bundle(opts.runs_mount), opts, None)
        for key, value, _ in _visited(shipped):
            if isinstance(value, str) and value:
                assert not value.startswith(str(tmp_path)), f"{key}={value}: a local path left in the pod's config"


def test_answer_eval_data_is_a_path_of_the_pipeline_file():
    assert [f.metadata.get("path") for f in dataclasses.fields(AnswerEval) if f.name == "data"] == ["data"]

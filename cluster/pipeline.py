"""Pipelines: `hone run pipeline.yaml` runs stages in order, each starting from the last one's model.

    output_dir: runs/handbook
    defaults: {model: {source: HuggingFaceTB/SmolLM2-135M-Instruct}, lora: {enabled: true}}
    stages:
      - pretrain.yaml                                   # a stage config file, or inline:
      - {name: sft, mode: sft, model: {source: previous}, data: {train: [qa.jsonl]}}

Every stage is an ordinary hone config: `defaults` sit under each stage, `model.source: previous` means
the previous stage's `model/` export, and each stage writes its own run dir `output_dir/<n>-<name>`.
Every stage is checked (config, data, rewards) before the first one trains. A rerun skips finished stages
and resumes the first unfinished one, because each stage is a normal run that resumes on its own.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cluster.connect import ray_session
from training.config import ConfigError, HoneConfig, apply_override, from_dict, read_raw, resolve_paths

PREVIOUS = "previous"
PIPELINE_KEYS = {"output_dir", "overwrite", "defaults", "stages"}


@dataclass
class Stage:
    name: str
    config: HoneConfig  # model.source still says "previous" where it chains


def is_pipeline(path: str | Path | None) -> bool:
    if path is None or not Path(path).is_file():
        return False
    raw = yaml.safe_load(Path(path).read_text())
    return isinstance(raw, dict) and "stages" in raw


def load_pipeline(path: str | Path, overrides: list[str] = ()) -> tuple[Path, list[Stage]]:  # type: ignore[assignment]
    """The pipeline's output dir and its stages, each a validated config. Overrides address the pipeline
    file (`defaults.scaling.num_workers=4`, `output_dir=...`)."""
    path = Path(path)
    raw = read_raw(path)
    for item in overrides:
        apply_override(raw, item)
    unknown = set(raw) - PIPELINE_KEYS
    if unknown:
        raise ConfigError(
            f"{path}: {sorted(unknown)[0]!r} is not a pipeline key; a pipeline file holds {sorted(PIPELINE_KEYS)} "
            "and each stage's settings go inside its entry in stages (or in defaults for every stage)"
        )
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ConfigError(f"{path}: stages must be a non-empty list of stage config files or inline stage configs")
    defaults = resolve_paths(copy.deepcopy(raw.get("defaults") or {}), path.parent)
    out = Path(raw.get("output_dir") or f"runs/{path.stem}")
    stages: list[Stage] = []
    for index, entry in enumerate(stages_raw):
        stage_raw, where = _stage_raw(entry, index, path)
        merged = _merge(defaults, stage_raw)
        name = str(merged.pop("name", None) or merged.get("mode", "sft"))
        merged.setdefault("output_dir", str(out / f"{index + 1}-{name}"))
        if raw.get("overwrite"):
            merged["overwrite"] = True
        wandb = merged.get("tracking", {}).get("wandb", {})
        if wandb.get("project") and not wandb.get("group"):
            wandb["group"] = out.name  # a pipeline is one W&B group, a run per stage
        try:
            config = from_dict(merged)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        if config.model.source == PREVIOUS and index == 0:
            raise ConfigError(f"{where}: model.source: previous needs a stage before it, and this is the first stage")
        if any(s.name == name for s in stages):
            raise ConfigError(f"{where}: another stage is already named {name!r}; give each stage its own name:")
        stages.append(Stage(name, config))
    return out, stages


def _stage_raw(entry: Any, index: int, path: Path) -> tuple[dict[str, Any], str]:
    where = f"{path} stage {index + 1}"
    if isinstance(entry, str):
        stage_path = Path(entry) if Path(entry).is_absolute() else path.parent / entry
        return read_raw(stage_path), f"{where} ({stage_path})"
    if isinstance(entry, dict):
        return resolve_paths(copy.deepcopy(entry), path.parent), where
    raise ConfigError(f"{where}: a stage is a config file path or a mapping of config keys, got {entry!r}")


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def chained(stages: list[Stage]) -> list[HoneConfig]:
    """Each stage's config with `previous` replaced by the previous stage's model export."""
    configs = []
    for index, stage in enumerate(stages):
        cfg = stage.config
        if cfg.model.source == PREVIOUS:
            previous = Path(stages[index - 1].config.output_dir).expanduser().resolve() / "model"
            cfg = from_dict({**_asdict(cfg), "model": {**_asdict(cfg)["model"], "source": str(previous)}})
        configs.append(cfg)
    return configs


def _asdict(cfg: HoneConfig) -> dict[str, Any]:
    from training.config import to_dict

    return to_dict(cfg)


def check_stages(stages: list[Stage]) -> None:
    """Check every stage's data (and rewards) before anything trains. A chained stage is checked with the
    first stage's model, whose tokenizer the chain keeps."""
    first = stages[0].config.model.source
    for stage in stages:
        cfg = stage.config
        if cfg.model.source == PREVIOUS:
            cfg = from_dict({**_asdict(cfg), "model": {**_asdict(cfg)["model"], "source": first}})
        if cfg.mode == "rl":
            from rl.prepare import prepare_rl

            prepare_rl(cfg)
        else:
            from training.prepare import prepare

            prepare(cfg)


def run_pipeline(path: str | Path, overrides: list[str] = (), address: str | None = None) -> dict[str, Any]:  # type: ignore[assignment]
    from cluster.run import run

    out, stages = load_pipeline(path, overrides)
    check_stages(stages)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with ray_session(address):
        for index, (stage, cfg) in enumerate(zip(stages, chained(stages), strict=True)):
            print(f"\nhone: pipeline stage {index + 1}/{len(stages)}: {stage.name} ({cfg.mode}) -> {cfg.output_dir}", flush=True)
            summary = run(cfg, address)
            results.append(
                {"name": stage.name, "mode": cfg.mode, "run_dir": str(Path(cfg.output_dir).resolve())} | {"eval": summary["eval"]}
            )
            _write(out, stages, results)
    print(format_pipeline_table(results))
    return {"output_dir": str(out), "stages": results}


def _write(out: Path, stages: list[Stage], results: list[dict[str, Any]]) -> None:
    """pipeline.json: every stage, finished or not, so a report can be made at any point."""
    done = {r["name"] for r in results}
    rows = results + [
        {"name": s.name, "mode": s.config.mode, "run_dir": str(Path(s.config.output_dir).resolve()), "status": "pending"}
        for s in stages
        if s.name not in done
    ]
    for row in rows:
        row.setdefault("status", "finished")
    (out / "pipeline.json").write_text(json.dumps({"stages": rows}, indent=2))


def format_pipeline_table(results: list[dict[str, Any]]) -> str:
    """Every stage's held-out metrics before and after, side by side."""
    lines = ["\npipeline: held-out evaluation of each stage (before -> after)"]
    for r in results:
        before, after = r["eval"]["before"], r["eval"]["after"]
        parts = ", ".join(f"{k} {before[k]:.4f} -> {after.get(k, float('nan')):.4f}" for k in before)
        lines.append(f"  {r['name']:<12} ({r['mode']}): {parts}")
    return "\n".join(lines)

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
import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hone.cluster.connect import ray_session, worker_task
from hone.cluster.run import prepare_any, run
from hone.cluster.rundir import run_dir_lock, trained_on_an_older_model
from hone.training.config import (
    STAGE_REF,
    ConfigError,
    HoneConfig,
    apply_override,
    build,
    config_from_raw,
    from_dict,
    map_paths,
    path_field,
    read_raw,
    read_yaml,
    resolve_paths,
)
from hone.training.files import fingerprint, read_json, write_json

PREVIOUS = "previous"


@dataclass(frozen=True)
class AnswerEval:
    """The pipeline's own yardstick (`eval:` in the pipeline file): held-out questions with reference
    answers, asked of the base model and of every stage's export. Stages measure different things (text
    loss, answers, reward); this table measures one thing across all of them."""

    data: str = path_field("data")  # jsonl of messages / prompt_completion rows; optional `key_fact` and `group` fields
    # More questions of the same kind, such as a synth stage's document-recall probes ("@synth/probes.jsonl");
    # read when the first stage that trains starts, since a stage before it may write them.
    probes: str = path_field("data")
    # Retention, what tuning cost outside the new data: every model's mean token loss on general text
    # (retention/loss), and how far its answers to general instructions still agree with the base model's
    # own (retention/agreement, token F1). examples/retention holds a public-domain set of both.
    retention_text: str = path_field("data")  # a .txt / .md file
    retention_prompts: str = path_field("data")  # jsonl rows with a "prompt"
    retention_max_new_tokens: int = 32
    # Best-epoch selection on held-out recall: after a stage with train.keep_epoch_models, its epoch models
    # and model/ are asked the probes, and the next stage (and this stage's row) takes the one scoring best
    # on this key (exact_match/GROUP or contains/GROUP of a group of the probes; ties go to the earlier
    # epoch). The eval.data questions are never used to choose, so they stay a fair test.
    select_by: str = ""
    max_new_tokens: int = 24
    max_samples: int = 0  # 0: every row
    batch_size: int = 16


@dataclass(frozen=True)
class PipelineFile:
    """The keys of a pipeline file, built and checked by the same builder as a run config."""

    output_dir: str = path_field("output")  # empty: runs/<pipeline file name>
    overwrite: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)  # config keys under every stage
    stages: list[Any] = field(default_factory=list)  # stage config files, or inline configs with a `name`
    eval: AnswerEval | None = None


@dataclass(frozen=True)
class Stage:
    name: str
    config: HoneConfig  # model.source still says "previous" where it chains
    reads: tuple[str, ...] = ()  # files an earlier stage writes ("@synth/qa.jsonl", resolved to its run dir)


@dataclass(frozen=True)
class Pipeline:
    path: Path  # the pipeline file
    output_dir: Path
    stages: list[Stage]
    eval: AnswerEval | None


def load_any(path: str | Path, overrides: list[str] = ()) -> HoneConfig | Pipeline:  # type: ignore[assignment]
    """A config file or a pipeline file (one with `stages:`), read once, built and checked."""
    raw = read_yaml(path)
    if "stages" in raw:
        return pipeline_from_raw(raw, Path(path), overrides)
    return config_from_raw(resolve_paths(raw, Path(path).parent), overrides)


def load_pipeline(path: str | Path, overrides: list[str] = ()) -> Pipeline:  # type: ignore[assignment]
    """The pipeline's stages, each a validated config, and its `eval:` block. Overrides address the
    pipeline file (`defaults.scaling.num_workers=4`, `stages.sft.optim.lr=1e-4`, `output_dir=...`)."""
    return pipeline_from_raw(read_yaml(path), Path(path), overrides)


def pipeline_from_raw(raw: dict[str, Any], path: Path, overrides: list[str] = ()) -> Pipeline:  # type: ignore[assignment]
    _resolve_all(raw, path.parent)  # paths in the file are relative to the file,
    for item in overrides:
        apply_override(raw, item)
    _resolve_all(raw, Path.cwd())  # and those given on the command line to the working directory
    try:
        spec: PipelineFile = build(PipelineFile, raw, prefix="")
    except ConfigError as err:
        stage_key = str(err).startswith("unknown config key") and "valid keys" not in str(err)
        hint = "; a stage's settings go inside its entry in stages (or in defaults, for every stage)" if stage_key else ""
        raise ConfigError(f"{path}: {err}{hint}") from None
    if not spec.stages:
        raise ConfigError(f"{path}: stages must be a non-empty list of stage config files or inline stage configs")
    if spec.eval is not None:
        _check_answer_spec(spec.eval, path)
    out = Path(spec.output_dir or f"runs/{path.stem}")
    stages = _stages(spec, out, path)
    answer_eval = spec.eval
    if answer_eval is not None and answer_eval.probes.startswith(STAGE_REF):
        done = {s.name: Path(s.config.output_dir) for s in stages}
        answer_eval = replace(answer_eval, probes=str(_stage_file(answer_eval.probes, done, f"{path}: eval.probes")))
    return Pipeline(path, out, stages, answer_eval)


def _resolve_all(raw: dict[str, Any], base: Path) -> None:
    """Make the relative paths of a pipeline mapping absolute against `base`: its own keys, the defaults and
    every inline stage (a stage file resolves its own paths when read). Absolute paths stay as they are."""
    resolve_paths(raw, base, PipelineFile)
    if isinstance(raw.get("defaults"), dict):
        resolve_paths(raw["defaults"], base)
    for entry in raw.get("stages") or []:
        if isinstance(entry, dict):
            resolve_paths(entry, base)


def _check_answer_spec(spec: AnswerEval, path: Path) -> None:
    if not spec.data:
        raise ConfigError(f"{path}: eval.data is missing: give the jsonl of held-out questions and answers")
    for key in ("max_new_tokens", "batch_size"):
        if getattr(spec, key) < 1:
            raise ConfigError(f"{path}: eval.{key}={getattr(spec, key)!r} must be a whole number of 1 or more")
    if spec.max_samples < 0:
        raise ConfigError(f"{path}: eval.max_samples={spec.max_samples} must be 0 (every row) or more")
    if spec.select_by:
        metric, _, group = spec.select_by.partition("/")
        if metric not in ("exact_match", "contains") or not group:
            raise ConfigError(
                f"{path}: eval.select_by={spec.select_by!r} must be exact_match/GROUP or contains/GROUP, GROUP a group "
                "of eval.probes (a synth stage's probes are group doc_recall)"
            )
        if not spec.probes:
            raise ConfigError(
                f"{path}: eval.select_by chooses on the probes, and eval.probes is empty: give held-out probes "
                '(e.g. "@synth/probes.jsonl"); the eval.data questions are the test, never used to choose'
            )


def _stages(spec: PipelineFile, out: Path, path: Path) -> list[Stage]:
    stages: list[Stage] = []
    for index, entry in enumerate(spec.stages):
        stage_raw, where = _stage_raw(entry, index, path)
        merged = _merge(spec.defaults, stage_raw)  # a deep copy of the defaults under the stage's own keys
        name = str(merged.pop("name", None) or merged.get("mode", "sft"))
        merged.setdefault("output_dir", str(out / f"{index + 1}-{name}"))
        if spec.overwrite:
            merged["overwrite"] = True
        wandb = merged.get("tracking", {}).get("wandb", {})
        if wandb.get("project") and not wandb.get("group"):
            wandb["group"] = out.name  # a pipeline is one W&B group, a run per stage
        reads = _resolve_stage_refs(merged, {s.name: Path(s.config.output_dir) for s in stages}, where)
        try:
            config = from_dict(merged)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        if config.model.source == PREVIOUS and index == 0:
            raise ConfigError(f"{where}: model.source: previous needs a stage before it, and this is the first stage")
        if any(s.name == name for s in stages):
            raise ConfigError(f"{where}: another stage is already named {name!r}; give each stage its own name:")
        stages.append(Stage(name, config, tuple(reads)))
    return stages


def _resolve_stage_refs(raw: dict[str, Any], earlier: dict[str, Path], where: str) -> list[str]:
    """Replace, in place, every "@stage/file" data path of a stage by that file's path; returns them."""
    reads: list[str] = []

    def ref(key: str, value: Any, kind: str, section: dict[str, Any]) -> Any:
        if kind != "data" or not isinstance(value, str) or not value.startswith(STAGE_REF):
            return value
        reads.append(str(_stage_file(value, earlier, f"{where}: {key}")))
        return reads[-1]

    map_paths(raw, ref)
    return reads


def _stage_file(value: str, earlier: dict[str, Path], where: str) -> Path:
    """The file "@stage/name" points at: `name` inside that earlier stage's run dir."""
    stage, _, file = value[len(STAGE_REF) :].partition("/")
    if stage not in earlier or not file:
        known = ", ".join(earlier) or "none"
        raise ConfigError(
            f"{where}={value!r}: a stage's file is named @STAGE/FILE with STAGE an earlier stage (earlier stages: {known})"
        )
    return earlier[stage] / file


def _stage_raw(entry: Any, index: int, path: Path) -> tuple[dict[str, Any], str]:
    where = f"{path} stage {index + 1}"
    if isinstance(entry, str):
        stage_path = Path(entry) if Path(entry).is_absolute() else path.parent / entry
        return read_raw(stage_path), f"{where} ({stage_path})"
    if isinstance(entry, dict):
        return copy.deepcopy(entry), where
    raise ConfigError(f"{where}: a stage is a config file path or a mapping of config keys, got {entry!r}")


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _with_model(cfg: HoneConfig, source: str) -> HoneConfig:
    return replace(cfg, model=replace(cfg.model, source=source))


def chained(stages: list[Stage]) -> list[HoneConfig]:
    """Each stage's config with `previous` replaced by the previous stage's model export; a synth stage
    exports no model, so after one `previous` is the model that stage was given."""
    configs: list[HoneConfig] = []
    for index, stage in enumerate(stages):
        cfg = stage.config
        if cfg.model.source == PREVIOUS:
            before = configs[index - 1]
            given = (
                before.model.source if before.mode == "synth" else str(Path(before.output_dir).expanduser().resolve() / "model")
            )
            cfg = _with_model(cfg, given)
        configs.append(cfg)
    return configs


def check_stages(stages: list[Stage]) -> None:
    """Check every stage's data (and rewards) before anything trains. A chained stage is checked with the
    first stage's model, whose tokenizer the chain keeps."""
    first = stages[0].config.model.source
    for stage in stages:
        cfg = stage.config
        unwritten = [f for f in stage.reads if not Path(f).exists()]
        if unwritten:  # written by an earlier stage of this run: checked when this stage starts
            print(
                f"hone: pipeline: {stage.name} reads {', '.join(unwritten)}, checked once an earlier stage writes it", flush=True
            )
            continue
        prepare_any(_with_model(cfg, first) if cfg.model.source == PREVIOUS else cfg)


def run_pipeline(pipeline: Pipeline, address: str | None = None) -> dict[str, Any]:
    stages, out, answer_eval = pipeline.stages, pipeline.output_dir, pipeline.eval
    check_stages(stages)
    questions = check_answer_eval(answer_eval) if answer_eval else None
    results: list[dict[str, Any]] = []
    answers: dict[str, dict[str, float]] = {}
    asked: Asked | None = None
    with run_dir_lock(out), ray_session(address):  # answers.json and pipeline.json: one pipeline run at a time
        out.mkdir(parents=True, exist_ok=True)
        chosen: dict[str, str] = {}  # stage name -> the model the next stage starts from, when not its model/
        for index, (stage, cfg) in enumerate(zip(stages, chained(stages), strict=True)):
            if stage.config.model.source == PREVIOUS and stages[index - 1].name in chosen:
                cfg = _with_model(cfg, chosen[stages[index - 1].name])
            if answer_eval and questions and asked is None and cfg.mode != "synth":
                # asked right before the first stage that trains: a synth stage before it writes the probes
                asked = _asked(questions, answer_eval)
                answers["base"] = _answers(out, "base", stages[0].config, None, answer_eval, asked)
            print(f"\nhone: pipeline stage {index + 1}/{len(stages)}: {stage.name} ({cfg.mode}) -> {cfg.output_dir}", flush=True)
            if stage.config.model.source == PREVIOUS and trained_on_an_older_model(cfg):
                # The stage before was trained again (in this run or by hand): this stage's result is
                # stale, so its run (same config, another input model) is replaced, not shown as finished.
                print(f"hone: pipeline: {stage.name} started from an earlier {cfg.model.source}; training it again", flush=True)
                cfg = replace(cfg, overwrite=True)
            summary = run(cfg, address)
            results.append(
                {"name": stage.name, "mode": cfg.mode, "run_dir": str(Path(cfg.output_dir).resolve())} | {"eval": summary["eval"]}
            )
            if answer_eval and asked and cfg.mode != "synth":
                model = str(Path(cfg.output_dir).resolve() / "model")
                after = _answers(out, f"after {stage.name}", cfg, model, answer_eval, asked)
                if answer_eval.select_by and cfg.train.keep_epoch_models:
                    selection = _select_epoch(out, stage.name, cfg, answer_eval, asked, after)
                    results[-1]["selected"] = selection
                    if selection["model"] != model:
                        model = chosen[stage.name] = selection["model"]
                        after = _answers(out, f"after {stage.name}", cfg, model, answer_eval, asked)
                answers[f"after {stage.name}"] = after
            _write(out, stages, results, answers)
    print(format_pipeline_table(results))
    if answer_eval:
        print(format_answers_table(answers, Path(answer_eval.data).name))
        for r in results:
            if "selected" in r:
                print(f"  after {r['name']}: its {r['selected']['label']}, the best on {r['selected']['by']} (eval.select_by)")
    return {"output_dir": str(out), "stages": results, "answers": answers}


def check_answer_eval(spec: AnswerEval) -> tuple[str, list[dict[str, Any]]]:
    """The eval questions, read and checked before anything trains: (format, rows)."""
    from hone.training.data import check_rows, detect_format, load_rows

    rows = load_rows([spec.data])
    fmt = detect_format(rows, "auto")
    if fmt not in ("messages", "prompt_completion", "instruction"):
        raise ConfigError(
            f"eval.data {spec.data}: the pipeline's questions need answers to compare with (messages with an assistant "
            f"turn, prompt/completion or instruction/output rows), but the rows are {fmt!r}"
        )
    check_rows(rows, fmt)
    _retention_inputs(spec)
    return fmt, rows[: spec.max_samples] if spec.max_samples else rows


@dataclass(frozen=True)
class Asked:
    """Everything the pipeline's `eval:` puts to each model, read once."""

    fmt: str
    questions: list[dict[str, Any]]
    probes: list[dict[str, Any]]  # eval.probes: scored as their own group, never in "all"
    text: str  # eval.retention_text
    prompts: list[str]  # eval.retention_prompts

    def fingerprint(self) -> str:
        payload = json.dumps([self.questions, self.probes, self.text, self.prompts], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _asked(questions: tuple[str, list[dict[str, Any]]], spec: AnswerEval) -> Asked:
    """The checked questions with the probes (which need the same format) and the retention inputs."""
    fmt, rows = questions
    probes: list[dict[str, Any]] = []
    if spec.probes:
        probe_fmt, probes = check_answer_eval(replace(spec, data=spec.probes, max_samples=0))
        if probe_fmt != fmt:
            raise ConfigError(f"eval.probes {spec.probes} holds {probe_fmt!r} rows but eval.data holds {fmt!r}; use one format")
    return Asked(fmt, rows, probes, *_retention_inputs(spec))


def _answers(out: Path, name: str, cfg: HoneConfig, model_dir: str | None, spec: AnswerEval, asked: Asked) -> dict[str, float]:
    """One model's answers to the pipeline's questions (and probes, and retention), as a Ray task; cached in
    the pipeline dir, since a finished stage's export never changes."""
    import ray

    from hone.training.evaluate import answer_agreement, answers_of, pipeline_answers
    from hone.training.generation import resolve_backend
    from hone.training.models import resolve_source

    cache = out / "answers.json"
    done = read_json(cache) or {}
    model = model_dir or resolve_source(cfg.model.source)
    # Keyed by what the model is now, not by the stage's name: a retrained stage is asked again.
    key = fingerprint(Path(model)) if Path(model).exists() else model
    what = asked.fingerprint()
    if isinstance(done.get(name), dict) and done[name].get("model") == key and done[name].get("questions", what) == what:
        return done[name]["scores"]
    settings = replace(cfg.eval, max_new_tokens=spec.max_new_tokens, max_samples=0, batch_size=spec.batch_size)
    eval_cfg = replace(cfg, mode="sft", eval=settings)
    retention = " and the retention checks" if asked.text or asked.prompts else ""
    print(
        f"hone: pipeline: {name}: answering {len(asked.questions) + len(asked.probes)} held-out questions{retention} ...",
        flush=True,
    )
    what_asked = (asked.questions, asked.fmt, asked.probes, asked.text, asked.prompts, spec.retention_max_new_tokens)
    if cfg.deepspeed.zero_stage == 3:  # a model that may only fit partitioned: asked on a worker group, HF generate
        from hone.cluster.train_run import sharded_job

        names = ("questions", "fmt", "probes", "text", "prompts", "prompt_tokens")
        args = {"cfg": eval_cfg, **dict(zip(names, what_asked, strict=True))}
        got = sharded_job(cfg, model, "causal", answers_of, args, out, f"pipeline: {name}: asked them")
    else:
        task = worker_task(pipeline_answers, cfg.scaling)
        if resolve_backend(cfg.generation.backend)[0] == "vllm":
            # vLLM's engine runs inside the task's process and rebinds its threads: a process of its own, not
            # one Ray would reuse for the next task.
            task = task.options(max_calls=1)
        got = ray.get(task.remote(eval_cfg, model, *what_asked))
    if asked.prompts:
        base = got["retention_answers"] if name == "base" else done.get("base", {}).get("retention_answers", [])
        if len(base) == len(asked.prompts):
            got["scores"]["retention/agreement"] = answer_agreement(got["retention_answers"], base)
    done[name] = {"model": key, "questions": what, **got}
    write_json(cache, done, indent=2)
    return done[name]["scores"]


def _select_epoch(
    out: Path, name: str, cfg: HoneConfig, spec: AnswerEval, asked: Asked, last: dict[str, float]
) -> dict[str, Any]:
    """The stage's epoch models, each asked the probes only, and model/ (`last`: its answers, already
    asked); the best by eval.select_by (ties: the earlier epoch, which has seen the new facts fewer
    times: Gekhman et al., 2024, find that facts learned late in fine-tuning raise hallucination)."""
    from hone.training.loop import EPOCHS

    run_dir = Path(cfg.output_dir).resolve()
    epochs = sorted((p for p in (run_dir / EPOCHS).glob("*") if p.name.isdigit()), key=lambda p: int(p.name))
    probes_only = Asked(asked.fmt, asked.probes, [], "", [])
    candidates = [
        (f"epoch {p.name}", str(p), _answers(out, f"{name} epoch {p.name}", cfg, str(p), spec, probes_only)) for p in epochs
    ]
    candidates.append((f"epoch {cfg.train.num_epochs} (model/)", str(run_dir / "model"), last))
    scores = {label: got for label, _, got in candidates}
    group = spec.select_by.split("/", 1)[1]
    if not any(spec.select_by in s for s in scores.values()):
        raise ConfigError(f"eval.select_by={spec.select_by!r}: the probes in {spec.probes} hold no rows of group {group!r}")
    label, model, _ = candidates[first_best([got.get(spec.select_by, 0.0) for _, _, got in candidates])]
    values = ", ".join(f"{k} {100 * v.get(spec.select_by, 0.0):.1f}" for k, v in scores.items())
    print(f"hone: pipeline: {name}: {spec.select_by} (%) by epoch: {values}; going on from {label}", flush=True)
    return {"by": spec.select_by, "model": model, "label": label, "scores": {k: v.get(spec.select_by) for k, v in scores.items()}}


def first_best(values: list[float]) -> int:
    """The index of the highest value; of several equal ones, the first (the earlier epoch)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def _retention_inputs(spec: AnswerEval) -> tuple[str, list[str]]:
    """eval.retention_text and the prompts of eval.retention_prompts, checked (also before anything trains)."""
    from hone.training.data import load_rows, read_utf8

    text = read_utf8(Path(spec.retention_text)) if spec.retention_text else ""
    rows = load_rows([spec.retention_prompts]) if spec.retention_prompts else []
    for i, row in enumerate(rows):
        if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise ConfigError(f"eval.retention_prompts {spec.retention_prompts} row {i + 1}: needs a non-empty 'prompt' string")
    return text, [r["prompt"] for r in rows]


def _write(out: Path, stages: list[Stage], results: list[dict[str, Any]], answers: dict[str, dict[str, float]]) -> None:
    """pipeline.json: every stage, finished or not, so a report can be made at any point."""
    done = {r["name"] for r in results}
    rows = results + [
        {"name": s.name, "mode": s.config.mode, "run_dir": str(Path(s.config.output_dir).resolve()), "status": "pending"}
        for s in stages
        if s.name not in done
    ]
    for row in rows:
        row.setdefault("status", "finished")
    write_json(out / "pipeline.json", {"stages": rows, "answers": answers}, indent=2)


def format_pipeline_table(results: list[dict[str, Any]]) -> str:
    """Every stage's held-out metrics before and after, side by side."""
    lines = ["\npipeline: held-out evaluation of each stage (before -> after)"]
    for r in results:
        before, after = r["eval"]["before"], r["eval"]["after"]
        parts = ", ".join(f"{k} {before[k]:.4f} -> {after.get(k, float('nan')):.4f}" for k in before)
        lines.append(f"  {r['name']:<12} ({r['mode']}): {parts}")
    return "\n".join(lines)


def format_answers_table(answers: dict[str, dict[str, float]], source: str = "") -> str:
    """Rows: the base model and each stage's export; columns: all questions, then each group; each cell
    is exact match | contains the key fact, in percent."""
    if not answers:
        return ""
    groups = sorted({k.split("/", 1)[1] for scores in answers.values() for k in scores if k.startswith("exact_match/")})
    columns = [("all", "exact_match", "contains")] + [(g, f"exact_match/{g}", f"contains/{g}") for g in groups]
    lines = [
        f"\npipeline: answers to the held-out questions{' in ' + source if source else ''}: exact match | contains the key fact (%)",
        f"{'model':<22}" + "".join(f"{title:>20}" for title, _, _ in columns),
    ]
    retention = any("retention/loss" in scores or "retention/agreement" in scores for scores in answers.values())
    if retention:
        lines[0] += "; retention: general-text loss (change vs base) | agreement with the base's answers (%)"
        lines[1] += f"{'retention':>26}"
    base = answers.get("base", {}).get("retention/loss")
    for name, scores in answers.items():
        cells = [f"{100 * scores.get(e, float('nan')):5.1f} | {100 * scores.get(c, float('nan')):5.1f}" for _, e, c in columns]
        line = f"{name:<22}" + "".join(f"{cell:>20}" for cell in cells)
        if retention:
            loss = scores.get("retention/loss", float("nan"))
            change = f"{100 * (loss / base - 1):+.1f}%" if base else "n/a"
            agreement = 100 * scores.get("retention/agreement", float("nan"))
            cell = f"{loss:.3f} ({change}) | {agreement:5.1f}"
            line += f"{cell:>26}"
        lines.append(line)
    return "\n".join(lines)

"""`hone report DIR`: print what a run, sweep or pipeline achieved and draw its curves as PNGs in DIR.

    hone report runs/my-run          # the before/after table; loss.png (or rewards.png for rl), eval.png
    hone report runs/my-sweep        # the trials ranked; sweep.png (metric per trial), sweep_ranked.png
    hone report runs/my-pipeline     # a run report in every stage's run dir, then each stage's before/after

Only files are read (metrics.jsonl, summary.json, sweep.json, pipeline.json), so a report works on a
run still in progress and needs no Ray. Figures are drawn on matplotlib's Agg canvas: no display needed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hone.cluster.pipeline import format_answers_table, format_pipeline_table
from hone.cluster.rundir import format_table
from hone.training.errors import HoneError
from hone.training.files import read_json, read_jsonl


class ReportError(HoneError, RuntimeError):
    """The directory holds nothing a report can be made from."""


def report(path: str | Path) -> list[Path]:
    """Print the report for DIR and return the PNGs written."""
    path = Path(path).expanduser().resolve()
    if (path / "pipeline.json").exists():
        return report_pipeline(path)
    if (path / "sweep.json").exists():
        return report_sweep(path)
    if (path / "summary.json").exists() or (path / "metrics.jsonl").exists():
        return report_run(path)
    raise ReportError(
        f"{path} is not a hone run, sweep or pipeline dir: expected summary.json or metrics.jsonl (a run), "
        "sweep.json (a sweep) or pipeline.json (a pipeline) in it"
    )


# -- a run ------------------------------------------------------------------------------------------


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return read_jsonl(run_dir / "metrics.jsonl")


def report_run(run_dir: Path) -> list[Path]:
    summary = read_json(run_dir / "summary.json")
    metrics = read_metrics(run_dir)
    state = f"{summary['mode']}, finished" if summary else "in progress (no summary.json yet)"
    print(f"# run {run_dir}: {state}, {len(metrics)} steps logged")
    if summary:
        print(format_table(summary))
    written = []
    if any("reward_mean" in r for r in metrics):
        written.append(_save(plot_rewards(metrics), run_dir / "rewards.png"))
    elif any("loss" in r for r in metrics):
        written.append(_save(plot_loss(metrics), run_dir / "loss.png"))
    if summary and summary["eval"]["before"]:
        written.append(_save(plot_eval(summary), run_dir / "eval.png"))
    _print_written(written)
    return written


def _series(metrics: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    rows = [r for r in metrics if isinstance(r.get(key), (int, float))]
    return [r["step"] for r in rows], [r[key] for r in rows]


def plot_loss(metrics: list[dict[str, Any]]) -> Any:
    fig, axes = _figure()
    ax = axes[0][0]
    ax.plot(*_series(metrics, "loss"), label="train loss")
    steps, evals = _series(metrics, "eval_loss")
    if steps:
        ax.plot(steps, evals, "o-", label="eval loss")
    _label(ax, "step", "loss", "loss")
    return fig


def plot_rewards(metrics: list[dict[str, Any]]) -> Any:
    """Top: mean reward with a ±1 std band and each named reward. Bottom: KL to the reference, entropy."""
    fig, axes = _figure(rows=2, size=(8, 7))
    top, bottom = axes[0][0], axes[1][0]
    rows = [r for r in metrics if "reward_mean" in r]
    steps, mean, std = [r["step"] for r in rows], [r["reward_mean"] for r in rows], [r.get("reward_std", 0.0) for r in rows]
    top.plot(steps, mean, label="reward_mean", linewidth=2)
    low, high = [m - s for m, s in zip(mean, std, strict=True)], [m + s for m, s in zip(mean, std, strict=True)]
    top.fill_between(steps, low, high, alpha=0.2, label="±1 std")
    for key in sorted({k for r in metrics for k in r if k.startswith("reward/")}):
        top.plot(*_series(metrics, key), label=key, linewidth=1)
    _label(top, "step", "reward", "reward")
    bottom.plot(*_series(metrics, "kl"), label="kl", color="tab:red")
    _label(bottom, "step", "kl", "kl to the reference and entropy")
    twin = bottom.twinx()  # entropy is nats per token, KL usually orders of magnitude smaller
    twin.plot(*_series(metrics, "entropy"), label="entropy", color="tab:purple")
    twin.set_ylabel("entropy")
    twin.legend(loc="upper right", fontsize="small")
    return fig


def plot_eval(summary: dict[str, Any]) -> Any:
    """One panel per held-out metric (their scales differ: perplexity vs accuracy), before and after."""
    before, after = summary["eval"]["before"], summary["eval"]["after"]
    fig, axes = _figure(cols=len(before), size=(max(3.0 * len(before), 5.0), 4))
    for ax, key in zip(axes[0], before, strict=True):
        values = [before[key], after.get(key, math.nan)]
        bars = ax.bar(["before", "after"], [0.0 if math.isnan(v) else v for v in values], color=["tab:gray", "tab:blue"])
        ax.bar_label(bars, labels=[f"{v:.4g}" for v in values], fontsize="small")
        ax.set_title(key)
    fig.suptitle(f"held-out evaluation ({summary.get('mode', '?')})")
    return fig


# -- a sweep ----------------------------------------------------------------------------------------


def report_sweep(sweep_dir: Path) -> list[Path]:
    sweep = read_json(sweep_dir / "sweep.json")
    trials = sweep["trials"]
    print(f"# sweep {sweep_dir}: {len(trials)} trials, {sweep['mode']} {sweep['metric']}")
    print(format_trials(sweep))
    curves = {t["trial_id"]: _curve(sweep_dir, t, sweep["metric"]) for t in trials}
    written = [_save(plot_sweep(sweep, curves), sweep_dir / "sweep.png")]
    if any(_final(t) is not None for t in trials):
        written.append(_save(plot_ranked(sweep), sweep_dir / "sweep_ranked.png"))
    _print_written(written)
    return written


def _curve(sweep_dir: Path, trial: dict[str, Any], metric: str) -> tuple[list[float], list[float]]:
    if not trial.get("run_dir"):  # a trial that failed before it got a run dir
        return [], []
    return _series(read_metrics(sweep_dir / trial["run_dir"]), metric)  # an absolute run_dir replaces sweep_dir


def _final(trial: dict[str, Any]) -> float | None:
    value = trial.get("metric")
    return value if isinstance(value, (int, float)) and not math.isnan(value) else None


def _ranked(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """Trials by the sweep's own rank; those without one (failed, no metric) go last."""
    return sorted(sweep["trials"], key=lambda t: (t.get("rank") is None, t.get("rank") or 0))


def _overrides(trial: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.get("overrides", {}).items())


def format_trials(sweep: dict[str, Any]) -> str:
    lines = [f"\n{'rank':<6}{'trial':<10}{sweep['metric']:>14}{'steps':>8}  {'status':<28}overrides"]
    for t in _ranked(sweep):
        final = _final(t)
        status = t.get("status", "?") + (" (stopped early)" if t.get("stopped_early") else "")
        value = f"{final:>14.4f}" if final is not None else f"{'-':>14}"
        lines.append(f"{t.get('rank') or '-':<6}{t['trial_id']:<10}{value}{t.get('steps', '-'):>8}  {status:<28}{_overrides(t)}")
    best = sweep.get("best")
    if best:
        lines.append(f"best: {best['trial_id']} in {best['run_dir']}; its config: {best.get('config_path', '-')}")
    return "\n".join(lines)


def plot_sweep(sweep: dict[str, Any], curves: dict[str, tuple[list[float], list[float]]]) -> Any:
    """One line per trial; a trial ASHA stopped early is dashed and ends in an ×."""
    fig, axes = _figure(size=(9, 5))
    ax = axes[0][0]
    for t in _ranked(sweep):
        steps, values = curves[t["trial_id"]]
        if not steps:
            continue
        stopped = bool(t.get("stopped_early"))
        label = f"{t['trial_id']} {_overrides(t)}" + (" (stopped)" if stopped else "")
        (line,) = ax.plot(steps, values, "--" if stopped else "-", marker=".", label=label)  # "." shows a 1-point trial
        if stopped:
            ax.plot(steps[-1:], values[-1:], "x", color=line.get_color(), markersize=10, markeredgewidth=2)
    _label(ax, "step", sweep["metric"], f"{sweep['metric']} per trial ({sweep['mode']}; × = stopped early)")
    return fig


def plot_ranked(sweep: dict[str, Any]) -> Any:
    """The final metric of every trial that has one, best on top; stopped trials hatched."""
    trials = [t for t in _ranked(sweep) if _final(t) is not None]
    fig, axes = _figure(size=(8, max(2.5, 0.5 * len(trials) + 1.5)))
    ax = axes[0][0]
    labels = [f"#{t.get('rank') or '-'} {t['trial_id']}" for t in trials]
    bars = ax.barh(labels, [_final(t) for t in trials], color=["tab:green" if i == 0 else "tab:blue" for i in range(len(trials))])
    for bar, t in zip(bars, trials, strict=True):
        if t.get("stopped_early"):
            bar.set_hatch("//")
            bar.set_alpha(0.6)
    ax.bar_label(bars, labels=[f"{_final(t):.4g}" for t in trials], fontsize="small")
    ax.invert_yaxis()
    ax.set_xlabel(f"final {sweep['metric']} ({sweep['mode']}; hatched = stopped early)")
    return fig


# -- a pipeline -------------------------------------------------------------------------------------


def report_pipeline(pipeline_dir: Path) -> list[Path]:
    saved = read_json(pipeline_dir / "pipeline.json")
    stages, answers = saved["stages"], saved.get("answers") or {}
    print(f"# pipeline {pipeline_dir}: {len(stages)} stages")
    written: list[Path] = []
    for stage in stages:
        run_dir = Path(stage["run_dir"])
        print(f"\n## stage {stage['name']} ({stage['mode']}, {stage.get('status', '?')})")
        try:
            written += report(run_dir)
        except ReportError:
            print(f"nothing to report yet in {run_dir}")
    # The same side-by-side table `hone run pipeline.yaml` ends with, from each finished stage's summary.
    summaries = [(stage, read_json(Path(stage["run_dir"]) / "summary.json")) for stage in stages]
    print(format_pipeline_table([stage | {"eval": summary["eval"]} for stage, summary in summaries if summary]))
    if answers:
        print(format_answers_table(answers))
        written.append(_save(plot_answers(answers), pipeline_dir / "answers.png"))
        _print_written(written[-1:])
    return written


def plot_answers(answers: dict[str, dict[str, float]]) -> Any:
    """The pipeline's held-out questions: exact match and contains-the-key-fact per question group, for
    the base model and after each stage, side by side."""
    groups = sorted({k.split("/", 1)[1] for scores in answers.values() for k in scores if k.startswith("exact_match/")}) or [""]
    fig, axes = _figure(rows=2, cols=len(groups), size=(max(4.5 * len(groups), 6.0), 7))
    for row, metric in enumerate(("exact_match", "contains")):
        for ax, group in zip(axes[row], groups, strict=True):
            key = f"{metric}/{group}" if group else metric
            values = [100 * scores.get(key, math.nan) for scores in answers.values()]
            bars = ax.bar(list(answers), [0.0 if math.isnan(v) else v for v in values], color="tab:blue")
            ax.bar_label(bars, labels=[f"{v:.0f}" for v in values], fontsize="small")
            ax.set_ylim(0, 105)
            ax.set_ylabel("%")
            ax.set_title(f"{metric} {group}".strip())
            ax.tick_params(axis="x", labelrotation=20)
    fig.suptitle("held-out questions: base model and after each stage")
    return fig


# -- drawing ----------------------------------------------------------------------------------------


def _figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (8, 4.5)) -> tuple[Any, Any]:
    # A bare Figure on an Agg canvas, not pyplot: no global figure state and no display backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _label(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    return path


def _print_written(paths: list[Path]) -> None:
    print("\nwrote: " + (", ".join(str(p) for p in paths) if paths else "no plots (no steps logged yet)"))

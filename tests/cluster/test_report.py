"""`hone report` on run, sweep and pipeline dirs written by hand (no training): the tables are printed and
every PNG is a real image; a dir holding none of them is a user error."""

from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image

from hone.cluster.cli import main
from hone.cluster.report import plot_sweep, read_metrics


def write_run(run_dir: Path, records: list[dict], summary: dict | None) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps({"model_path": str(run_dir / "model")} | summary))
    return run_dir


def sft_records(num_steps: int = 20, eval_every: int = 5, scale: float = 1.0) -> list[dict]:
    rows = []
    for step in range(1, num_steps + 1):
        row = {"step": step, "loss": scale * 2.0 / step, "lr": 1e-3, "tokens_per_s": 100.0, "step_seconds": 0.1}
        if step % eval_every == 0:
            row["eval_loss"] = scale * 2.2 / step
        rows.append(row)
    return rows


def rl_records(num_steps: int = 12) -> list[dict]:
    return [
        {
            "step": s,
            "reward_mean": s / num_steps,
            "reward_std": 0.2,
            "reward/exact_match": s / (2 * num_steps),
            "reward/format": 1.0,
            "kl": 0.001 * s,
            "entropy": 3.0 - 0.1 * s,
            "loss": -0.01,
            "lr": 1e-5,
        }
        for s in range(1, num_steps + 1)
    ]


SFT_SUMMARY = {
    "mode": "sft",
    "eval": {"before": {"loss": 1.5, "exact_match": 0.0}, "after": {"loss": 0.25, "exact_match": 0.875}},
}
RL_SUMMARY = {
    "mode": "rl",
    "eval": {"before": {"mean_reward": 0.25, "reward/format": 0.5}, "after": {"mean_reward": 1.0, "reward/format": 1.0}},
}


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0, path
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        image.verify()
    assert 200 <= width <= 4000 and 150 <= height <= 4000, (path, width, height)


def test_sft_run_prints_table_and_plots_loss_and_eval(tmp_path, capsys):
    run = write_run(tmp_path / "sft", sft_records(), SFT_SUMMARY)
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "held-out metric" in out
    assert f"{'loss':<18}{1.5:>12.4f}{0.25:>12.4f}{-1.25:>+12.4f}" in out
    assert f"{'exact_match':<18}{0.0:>12.4f}{0.875:>12.4f}" in out
    assert "sft, finished, 20 steps logged" in out
    for name in ("loss.png", "eval.png"):
        assert_png(run / name)
    assert not (run / "rewards.png").exists()


def test_run_in_progress_still_plots_its_curves(tmp_path, capsys):
    run = write_run(tmp_path / "live", sft_records(num_steps=7), summary=None)
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "in progress" in out and "7 steps logged" in out
    assert_png(run / "loss.png")
    assert not (run / "eval.png").exists()


def test_rl_run_plots_reward_curves(tmp_path, capsys):
    run = write_run(tmp_path / "rl", rl_records(), RL_SUMMARY)
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"{'mean_reward':<18}{0.25:>12.4f}{1.0:>12.4f}{0.75:>+12.4f}" in out
    for name in ("rewards.png", "eval.png"):
        assert_png(run / name)
    assert not (run / "loss.png").exists()


def write_sweep(root: Path) -> Path:
    """Three trials on eval_loss; ASHA stopped t1 and t2 early (after 5 and 10 of 20 steps); t3 failed with no run dir."""
    sweep_dir = root / "sweep"
    trials = []
    for rank, (trial_id, scale, steps, stopped) in enumerate(
        [("t0", 0.5, 20, False), ("t2", 1.0, 10, True), ("t1", 2.0, 5, True)], 1
    ):
        run = write_run(root / "trials" / trial_id, sft_records(num_steps=steps, eval_every=5, scale=scale), None)
        final = read_metrics(run)[-1]["eval_loss"]
        trials.append(
            {
                "trial_id": trial_id,
                "rank": rank,
                "run_dir": str(run),
                "overrides": {"optim.lr": 1e-3 * scale},
                "steps": steps,
                "metric": final,
                "stopped_early": stopped,
                "status": "TERMINATED",
            }
        )
    trials.append({"trial_id": "t3", "rank": 4, "run_dir": None, "metric": math.nan, "stopped_early": False, "status": "ERROR"})
    sweep_dir.mkdir()
    best = {"trial_id": "t0", "run_dir": trials[0]["run_dir"], "config_path": str(sweep_dir / "best.yaml")}
    (sweep_dir / "sweep.json").write_text(json.dumps({"metric": "eval_loss", "mode": "min", "trials": trials, "best": best}))
    return sweep_dir


def test_sweep_plots_one_curve_per_trial_and_a_ranked_bar(tmp_path, capsys):
    sweep_dir = write_sweep(tmp_path)
    assert main(["report", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert "4 trials, min eval_loss" in out
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("rank"))
    assert [line.split()[1] for line in lines[first + 1 : first + 5]] == ["t0", "t2", "t1", "t3"]
    assert lines[first + 4].split()[2:4] == ["-", "-"] and "ERROR" in lines[first + 4]
    assert out.count("(stopped early)") == 2
    assert "best: t0" in out and "best.yaml" in out
    for name in ("sweep.png", "sweep_ranked.png"):
        assert_png(sweep_dir / name)


def test_sweep_marks_stopped_trials_dashed_with_a_cross():
    trials = [{"trial_id": t, "stopped_early": t != "a", "rank": i + 1} for i, t in enumerate("abc")]
    curves = {"a": ([1, 2, 3], [3.0, 2.0, 1.0]), "b": ([1, 2], [3.0, 2.5]), "c": ([1], [4.0])}
    ax = plot_sweep({"metric": "loss", "mode": "min", "trials": trials}, curves).axes[0]
    styles = [(line.get_linestyle(), line.get_marker()) for line in ax.get_lines()]
    # a: solid; b and c: dashed, each followed by an × on its last point
    assert styles == [("-", "."), ("--", "."), ("None", "x"), ("--", "."), ("None", "x")]
    assert list(ax.get_lines()[2].get_xdata()) == [2]


def test_pipeline_reports_every_stage_and_prints_them_side_by_side(tmp_path, capsys):
    pretrain = write_run(
        tmp_path / "pretrain",
        sft_records(),
        {"mode": "pretrain", "eval": {"before": {"loss": 4.0, "perplexity": 54.6}, "after": {"loss": 3.0, "perplexity": 20.1}}},
    )
    sft = write_run(tmp_path / "sft", sft_records(), SFT_SUMMARY)
    stages = [
        {"name": "pretrain", "mode": "pretrain", "run_dir": str(pretrain), "status": "finished"},
        {"name": "sft", "mode": "sft", "run_dir": str(sft), "status": "finished"},
        {"name": "rl", "mode": "rl", "run_dir": str(tmp_path / "rl"), "status": "pending"},
    ]
    pipeline = tmp_path / "pipeline"
    pipeline.mkdir()
    (pipeline / "pipeline.json").write_text(json.dumps({"stages": stages}))
    assert main(["report", str(pipeline)]) == 0
    out = capsys.readouterr().out
    for stage in (pretrain, sft):
        assert_png(stage / "loss.png")
        assert_png(stage / "eval.png")
    table = out[out.index("pipeline: held-out evaluation of each stage") :]
    assert "pretrain     (pretrain): loss 4.0000 -> 3.0000, perplexity 54.6000 -> 20.1000" in table
    assert "sft          (sft): loss 1.5000 -> 0.2500, exact_match 0.0000 -> 0.8750" in table
    assert "## stage rl (rl, pending)" in out
    assert "nothing to report yet" in out


def test_a_dir_with_nothing_to_report_exits_1_naming_it(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("mode: sft\n")
    assert main(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"hone: error: {tmp_path.resolve()} is not a hone run, sweep or pipeline dir" in err
    assert "summary.json or metrics.jsonl" in err and "sweep.json" in err and "pipeline.json" in err
    assert main(["report", str(tmp_path / "missing")]) == 1


def test_nan_after_metric_still_draws(tmp_path, capsys):
    summary = {"mode": "sft", "eval": {"before": {"loss": 1.0, "exact_match": 0.5}, "after": {"loss": math.nan}}}
    run = write_run(tmp_path / "nan", sft_records(num_steps=3), summary)
    assert main(["report", str(run)]) == 0
    assert_png(run / "eval.png")

"""The main job's pipeline (examples/handbook/pipeline.yaml) run by the same code on a tiny model and a
cut-down handbook: the synth stage writes the data the later stages read, every training stage starts
from the previous stage's export, and the held-out question table has the base model and every stage, per
question group, with the document-recall probes and the retention checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from hone.cluster.cli import main
from hone.cluster.pipeline import first_best, load_pipeline
from hone.training.config import ConfigError
from tests.tiny import write_jsonl

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "handbook"


def _cut_down(tmp_path: Path) -> Path:
    """The example's files, the same pipeline.yaml, with a few rows of each and two short chapters."""
    root = tmp_path / "handbook"
    (root / "handbook").mkdir(parents=True)
    for chapter in ("01_welcome.md", "09_at_a_glance.md"):
        (root / "handbook" / chapter).write_text((EXAMPLE / "handbook" / chapter).read_text()[:1500])
    for name, count in (("train_qa.jsonl", 24), ("rl_prompts.jsonl", 24)):
        write_jsonl(root / name, _rows(EXAMPLE / name)[:count])
    heldout = _rows(EXAMPLE / "heldout_eval.jsonl")
    write_jsonl(
        root / "heldout_eval.jsonl",
        [r for r in heldout if r["group"] == "paraphrase"][:4] + [r for r in heldout if r["group"] == "handbook_only"][:4],
    )
    for name in ("pipeline.yaml", "rewards.py"):
        shutil.copy(EXAMPLE / name, root / name)
    shutil.copytree(EXAMPLE.parent / "retention", tmp_path / "retention")  # the pipeline's ../retention
    return root / "pipeline.yaml"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_the_handbook_pipeline_chains_its_stages_and_tables_every_model(assets, tmp_path, local_ray, capsys):
    pipeline = _cut_down(tmp_path)
    out = tmp_path / "out"
    overrides = [
        f"output_dir={out}",
        f"defaults.model.source={assets['llama']}",
        "defaults.scaling.cpus_per_worker=1",
        "stages.pretrain.train.micro_batch_per_device=2",
        "stages.rl.train.max_steps=2",
        f"stages.synth.synth.cache_dir={tmp_path / 'cache'}",
        "stages.synth.synth.replay_max_new_tokens=8",
        "stages.synth.synth.generator.cpus=1",
        # the quickstart leaves best-epoch selection off (its last epoch recalled most); this run turns it on
        "eval.select_by=exact_match/doc_recall",
        "stages.sft.train.keep_epoch_models=true",
    ]
    assert main(["run", str(pipeline), *overrides]) == 0
    printed = capsys.readouterr().out

    saved = json.loads((out / "pipeline.json").read_text())
    stages = saved["stages"]
    assert [s["name"] for s in stages] == ["synth", "pretrain", "sft", "rl"] and [s["status"] for s in stages] == ["finished"] * 4
    synth = Path(stages[0]["run_dir"])
    pretrain = yaml.safe_load((Path(stages[1]["run_dir"]) / "config.yaml").read_text())
    assert pretrain["model"]["source"] == str(assets["llama"])  # the synth stage exports no model
    assert pretrain["data"]["train"] == [str(synth / "text.jsonl")]
    sft, rl = (yaml.safe_load((Path(s["run_dir"]) / "config.yaml").read_text()) for s in stages[2:])
    assert sft["model"]["source"] == str(Path(stages[1]["run_dir"]) / "model")  # starts from the last export
    assert {str(synth / "qa.jsonl"), str(synth / "replay.jsonl")} <= set(sft["data"]["train"])
    replayed = [json.loads(line) for line in (synth / "replay.jsonl").read_text().splitlines()]
    samples = yaml.safe_load((synth / "config.yaml").read_text())["synth"]["replay_samples"]
    assert 0 < len(replayed) <= 48 * samples and all(r["kind"] == "replay" for r in replayed)  # the untuned model's answers
    # sft kept its first epoch's model; the probes chose between it and the end, and rl went on from the choice
    selected = stages[2]["selected"]
    assert selected["by"] == "exact_match/doc_recall" and list(selected["scores"]) == ["epoch 1", "epoch 2 (model/)"]
    assert (Path(stages[2]["run_dir"]) / "epochs" / "1" / "config.json").exists()
    assert rl["model"]["source"] == selected["model"]
    focus = json.loads((Path(stages[3]["run_dir"]) / "focus.json").read_text())
    assert focus["focus"] == "missed" and focus["kept"]  # rl drew its prompts from those sft still missed

    answers = saved["answers"]
    assert list(answers) == ["base", "after pretrain", "after sft", "after rl"]
    # answers.json keeps each model's every reply: the 8 questions, then the probes, each scored
    replies = json.loads((out / "answers.json").read_text())["after sft"]["replies"]
    probes = (synth / "probes.jsonl").read_text().splitlines()
    assert len(replies) == 8 + len(probes) and {r["group"] for r in replies} == {"paraphrase", "handbook_only", "doc_recall"}
    assert all(r["question"] and r["reference"] and r["exact_match"] in (0.0, 1.0) for r in replies)
    for scores in answers.values():
        for metric in ("exact_match", "contains"):
            for group in ("paraphrase", "handbook_only", "doc_recall"):
                assert 0.0 <= scores[f"{metric}/{group}"] <= 1.0
        assert scores["retention/loss"] > 0 and 0.0 <= scores["retention/agreement"] <= 1.0
    assert answers["base"]["retention/agreement"] == 1.0  # the base model's answers are the reference
    table = printed[printed.index("pipeline: answers to the held-out questions") :]
    for row in answers:
        assert f"\n{row}" in table
    assert "paraphrase" in table and "handbook_only" in table and "doc_recall" in table and "retention" in table

    # `hone report` on the pipeline draws the same table as bars.
    assert main(["report", str(out)]) == 0
    png = (out / "answers.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_a_pipeline_eval_without_answers_is_refused_before_training(tmp_path):
    questions = write_jsonl(tmp_path / "q.jsonl", [{"text": "What is the VPN called?"}])
    path = tmp_path / "p.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "eval": {"data": "q.jsonl"},
                "stages": [{"mode": "sft", "model": {"source": "org/model"}, "data": {"train": [str(questions)]}}],
            }
        )
    )
    from hone.cluster.pipeline import check_answer_eval

    with pytest.raises(ConfigError, match=r"q.jsonl: the pipeline's questions need answers"):
        check_answer_eval(load_pipeline(path).eval)
    path.write_text(yaml.safe_dump({"eval": {"data": "q.jsonl", "max_new_token": 3}, "stages": []}))
    with pytest.raises(ConfigError, match=r"p.yaml: unknown config key eval.max_new_token; did you mean eval.max_new_tokens\?"):
        load_pipeline(path)


def test_a_retention_prompt_without_a_prompt_is_refused_naming_its_row(tmp_path):
    questions = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "Which VPN?", "completion": "Burrow"}])
    write_jsonl(tmp_path / "general.jsonl", [{"prompt": "Name a colour."}, {"instruction": "Name a fruit."}])
    path = tmp_path / "p.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "eval": {"data": "q.jsonl", "retention_prompts": "general.jsonl"},
                "stages": [{"mode": "sft", "model": {"source": "org/model"}, "data": {"train": [str(questions)]}}],
            }
        )
    )
    from hone.cluster.pipeline import check_answer_eval

    with pytest.raises(ConfigError, match=r"general.jsonl row 2: needs a non-empty 'prompt' string"):
        check_answer_eval(load_pipeline(path).eval)


def test_the_best_epoch_is_the_first_of_the_highest():
    assert first_best([0.3, 0.5, 0.5]) == 1 and first_best([0.0, 0.0]) == 0 and first_best([0.1, 0.2]) == 1


@pytest.mark.parametrize(
    ("select_by", "probes", "error"),
    [
        ("doc_recall", "p.jsonl", r"eval.select_by='doc_recall' must be exact_match/GROUP or contains/GROUP"),
        ("exact_match/doc_recall", "", r"eval.select_by chooses on the probes, and eval.probes is empty"),
    ],
)
def test_a_selection_that_cannot_be_made_on_probes_is_refused_at_load(tmp_path, select_by, probes, error):
    questions = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "Which VPN?", "completion": "Burrow"}])
    path = tmp_path / "p.yaml"
    stage = {"mode": "sft", "model": {"source": "org/model"}, "data": {"train": [str(questions)]}}
    path.write_text(yaml.safe_dump({"eval": {"data": "q.jsonl", "probes": probes, "select_by": select_by}, "stages": [stage]}))
    with pytest.raises(ConfigError, match=error):
        load_pipeline(path)

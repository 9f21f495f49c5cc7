"""mode synth with the generator-free templates (no Ray, no model calls): the files it writes, the report,
the probes it holds out, a rerun, and how a pipeline points later stages at its files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hone.cluster.cli import main
from hone.cluster.pipeline import chained, check_stages, load_pipeline
from hone.cluster.run import run
from hone.synth.quality import content_ngrams
from hone.training.config import ConfigError, load_config
from hone.training.data import DataError
from hone.training.prepare import prepare

DOCS = {
    "contacts.md": "# Contacts\n\nThe IT Service Desk answers on extension 2718 from 8:00. Piet Hallengren leads it.\n\n"
    "| Team | Lead | Extension |\n|---|---|---|\n| Quality hotline | Noor Belhadj | 6040 |\n",
    "leave.md": "# Leave\n\nParental leave is topped up to full pay for 16 weeks. Carried-over days must be used by 30 June.\n\n"
    "Volunteering leave is 2 days a year. Bereavement leave is 5 days, paid in full by Corvallen.\n",
    "travel.md": "# Travel\n\nThe daily meal allowance at home is EUR 48. Mileage is paid at EUR 0.31 per km.\n\n"
    "Flights over 6 hours may be booked in premium economy. Suspicious emails go to phish@corvallen.fi.\n",
}


def _docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir(exist_ok=True)
    for name, text in DOCS.items():
        (folder / name).write_text(text)
    return folder


def _synth(tmp_path: Path, assets: dict[str, Path], *extra: str) -> list[str]:
    evals = tmp_path / "eval.jsonl"
    evals.write_text(json.dumps({"question": "Which extension does the IT Service Desk answer on?", "answer": "2718"}) + "\n")
    return [
        "mode=synth",
        f"output_dir={tmp_path / 'synth'}",
        f"model.source={assets['llama']}",
        f"data.train=[{_docs(tmp_path)}]",
        f"data.eval=[{evals}]",
        "synth.generator.source=none",
        f"synth.cache_dir={tmp_path / 'cache'}",
        *extra,
    ]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_synth_run_writes_data_files_that_train_and_a_report_of_what_it_kept(tmp_path, assets, capsys):
    cfg = load_config(None, _synth(tmp_path, assets))
    summary = run(cfg)
    out = tmp_path / "synth"
    qa, text, probes = _rows(out / "qa.jsonl"), _rows(out / "text.jsonl"), _rows(out / "probes.jsonl")
    assert summary["eval"]["after"] == {"qa_rows": len(qa), "text_rows": len(text), "probes": len(probes), "chunks": 3}
    answers = {r["messages"][1]["content"] for r in qa + probes}
    assert {"16 weeks", "30 June", "EUR 48", "EUR 0.31 per km", "phish@corvallen.fi", "6040", "Piet Hallengren"} <= answers
    assert all({"source", "chunk", "evidence", "style"} <= r.keys() for r in qa)
    assert {r["kind"] for r in text} == {"original", "key_facts", "reordered", "qa"}
    assert {r["answer"] for r in _rows(out / "rl.jsonl")} == {r["messages"][1]["content"] for r in qa}
    report = json.loads((out / "report.json").read_text())
    assert sum(d["qa_kept"] for d in report["documents"].values()) == len(qa)
    assert all(c["exposures"] == 1 + c["qa_kept"] + c["restatements_kept"] for c in report["chunks"])
    assert "overlaps an evaluation question" in report["documents"]["contacts.md"]["rejected"]
    assert "| contacts.md |" in (out / "report.md").read_text()
    # the files are ordinary data: an sft run on qa.jsonl and a pretrain run on text.jsonl both validate
    sft = prepare(
        load_config(None, [f"model.source={assets['llama']}", f"data.train=[{out / 'qa.jsonl'}]", "data.max_seq_len=64"])
    )
    pre = prepare(
        load_config(
            None,
            ["mode=pretrain", f"model.source={assets['llama']}", f"data.train=[{out / 'text.jsonl'}]", "data.max_seq_len=64"],
        )
    )
    assert sft.fmt == "messages" and pre.fmt == "text"
    assert main(["validate", str(out / "config.yaml")]) == 0
    # a rerun is the finished run: nothing is generated or written again
    before = (out / "qa.jsonl").stat().st_mtime_ns
    assert run(cfg)["eval"] == summary["eval"]
    assert (out / "qa.jsonl").stat().st_mtime_ns == before


def test_probes_are_held_out_of_the_training_questions_and_fixed_by_the_seed(tmp_path, assets):
    run(load_config(None, _synth(tmp_path, assets)))
    out = tmp_path / "synth"
    probes, qa = _rows(out / "probes.jsonl"), _rows(out / "qa.jsonl")
    assert probes and {p["group"] for p in probes} == {"doc_recall"}
    for probe in probes:
        grams = content_ngrams(probe["messages"][0]["content"])
        for row in qa:  # no training question shares half its content trigrams with a probe
            mine = content_ngrams(row["messages"][0]["content"])
            assert len(mine & grams) < 0.5 * len(mine), (probe, row)
    again = tmp_path / "again"
    again.mkdir()
    run(load_config(None, _synth(again, assets, "seed=42")))
    assert _rows(again / "synth" / "probes.jsonl") == probes


def test_a_folder_with_no_readable_documents_fails_before_any_run_dir_is_made(tmp_path, assets):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "scan.png").write_bytes(b"\x89PNG")
    cfg = load_config(None, [*_synth(tmp_path, assets), f"data.train=[{empty}]"])
    with pytest.raises(DataError, match=str(empty)):
        run(cfg)
    assert not (tmp_path / "synth").exists()


def test_bad_synth_settings_are_refused_at_load_naming_the_field(tmp_path, assets):
    with pytest.raises(ConfigError, match="synth.styles"):
        load_config(None, [*_synth(tmp_path, assets), "synth.styles=[riddles]"])
    with pytest.raises(ConfigError, match="synth.generator.model"):
        load_config(None, [*_synth(tmp_path, assets), "synth.generator.base_url=http://127.0.0.1:9/v1"])


def _pipeline(tmp_path: Path, assets: dict[str, Path], train: str) -> Path:
    spec = {
        "output_dir": str(tmp_path / "pipe"),
        "defaults": {"model": {"source": str(assets["llama"])}},
        "eval": {"data": str(tmp_path / "eval.jsonl"), "probes": "@synth/probes.jsonl"},
        "stages": [
            {
                "name": "synth",
                "mode": "synth",
                "data": {"train": [str(_docs(tmp_path))]},
                "synth": {"generator": {"source": "none"}},
            },
            {"name": "sft", "mode": "sft", "model": {"source": "previous"}, "data": {"train": [train], "max_seq_len": 64}},
        ],
    }
    (tmp_path / "eval.jsonl").write_text(
        json.dumps({"messages": [{"role": "user", "content": "a?"}, {"role": "assistant", "content": "b"}]}) + "\n"
    )
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_later_stage_reads_the_synth_stages_files_by_name_and_starts_from_its_model(tmp_path, assets, capsys):
    pipeline = load_pipeline(_pipeline(tmp_path, assets, "@synth/qa.jsonl"))
    synth_dir = tmp_path / "pipe" / "1-synth"
    sft = pipeline.stages[1]
    assert sft.config.data.train == [str(synth_dir / "qa.jsonl")] and sft.reads == (str(synth_dir / "qa.jsonl"),)
    assert pipeline.eval is not None and pipeline.eval.probes == str(synth_dir / "probes.jsonl")
    assert chained(pipeline.stages)[1].model.source == str(assets["llama"])  # a synth stage exports no model
    check_stages(pipeline.stages)  # the synth stage is checked; the sft stage waits for its file
    assert "sft reads" in capsys.readouterr().out


def test_a_file_of_a_stage_that_does_not_come_earlier_is_refused_naming_the_stages(tmp_path, assets):
    with pytest.raises(ConfigError, match=r"@sythn/qa.jsonl.*earlier stages: synth"):
        load_pipeline(_pipeline(tmp_path, assets, "@sythn/qa.jsonl"))

"""mode synth end to end with real generators: a tiny local model on a Ray actor pool, and an
OpenAI-compatible endpoint served on loopback by `transformers serve` (a real server, not a mock). The
tiny model writes nonsense, which is the point: its replies are counted as malformed and skipped, the
template items still come out, a rerun asks the generator nothing, and a run killed midway resumes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from hone.cluster.cli import main
from hone.synth.endpoint import EndpointError
from hone.training.config import load_config
from tests.processes import kill_session

DOC = (
    "# Contacts\n\nThe IT Service Desk answers on extension 2718 from 8:00. Piet Hallengren leads it.\n\n"
    "# Leave\n\nParental leave is topped up for 16 weeks. Carried-over days must be used by 30 June.\n"
)


def _overrides(tmp_path: Path, assets: dict[str, Path], *extra: str) -> list[str]:
    docs = tmp_path / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "handbook.md").write_text(DOC)
    return [
        "mode=synth",
        f"output_dir={tmp_path / 'out'}",
        f"model.source={assets['llama']}",
        f"data.train=[{docs}]",
        f"synth.cache_dir={tmp_path / 'cache'}",
        "synth.styles=[direct, wh]",
        "synth.restatements=[key_facts]",
        "synth.chunk_words=20",
        "synth.generator.max_new_tokens=8",
        "synth.generator.cpus=1",
        *extra,
    ]


def _run_args(tmp_path: Path, overrides: list[str]) -> list[str]:
    """`hone run CONFIG key=value ...`: a config file saying only the mode, the rest as overrides."""
    config = tmp_path / "synth.yaml"
    config.write_text("mode: synth\n")
    return ["run", str(config), *overrides]


def _cached(tmp_path: Path) -> int:
    return sum(1 for _ in (tmp_path / "cache").rglob("*.json"))


@pytest.mark.slow
def test_a_synthesis_killed_midway_resumes_with_the_replies_it_had(tmp_path, assets):
    # one actor answering one prompt at a time, 12 prompts: slow enough to be killed in the middle
    overrides = _overrides(
        tmp_path, assets, "synth.samples=2", "synth.generator.batch_size=1", "synth.generator.max_new_tokens=48"
    )
    command = [str(Path(sys.executable).parent / "hone"), *_run_args(tmp_path, overrides)]
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    proc = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while _cached(tmp_path) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    kill_session(proc.pid, signal.SIGKILL)
    proc.wait()
    done = _cached(tmp_path)
    assert 2 <= done < 12, f"the kill came at {done} of 12 replies"
    assert not (tmp_path / "out" / "summary.json").exists()

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    cached_then = int(resumed.stdout.split(" generator replies (")[1].split(" cached")[0])
    assert cached_then >= done and _cached(tmp_path) == 12
    assert (tmp_path / "out" / "summary.json").exists()


@pytest.mark.slow
def test_the_tuned_model_as_a_local_generator_pool_and_a_rerun_that_asks_it_nothing(tmp_path, assets, local_ray, capsys):
    replay = tmp_path / "general.jsonl"
    replay.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("Name a colour.", "What is 2 plus 2?", "Say hello.")))
    overrides = _overrides(
        tmp_path,
        assets,
        "synth.generator.num_workers=2",
        "synth.generator.batch_size=2",
        f"synth.replay_prompts={replay}",
        "synth.replay_max_new_tokens=6",
        "synth.replay_temperature=1.0",  # sampled replay, two answers per prompt (greedy: the handbook e2e test)
        "synth.replay_samples=2",
    )
    assert main(_run_args(tmp_path, overrides)) == 0
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    asked = 2 * 3  # 2 chunks x (2 question styles + 1 restatement)
    assert _cached(tmp_path) == asked + 6  # and the untuned model's two answers to each replay prompt
    printed = capsys.readouterr().out
    assert f"{asked} generator replies (0 cached)" in printed
    replayed = [json.loads(line) for line in (out / "replay.jsonl").read_text().splitlines()]
    prompts = ["Name a colour.", "Name a colour.", "What is 2 plus 2?", "What is 2 plus 2?", "Say hello.", "Say hello."]
    assert [r["messages"][0]["content"] for r in replayed] == prompts
    assert all(r["kind"] == "replay" and r["messages"][1]["content"] for r in replayed)
    answers = [r["messages"][1]["content"] for r in replayed]
    assert answers[0::2] != answers[1::2]  # sampled: the two answers to a prompt are draws, not one answer twice
    reasons = {reason for c in report["chunks"] for reason in c["rejected"]}
    assert "restatement too short" in reasons  # 8 tokens of nonsense; the QA replies hold no pair to count
    qa = [json.loads(line) for line in (out / "qa.jsonl").read_text().splitlines()]
    assert {r["style"] for r in qa} == {"template"} and len(qa) > 0  # nonsense replies kept nothing

    # the same documents into another run dir: every reply comes from the cache, no actor is started
    again = [*overrides, f"output_dir={tmp_path / 'again'}"]
    assert main(_run_args(tmp_path, again)) == 0
    assert f"{asked} generator replies ({asked} cached)" in capsys.readouterr().out
    assert _cached(tmp_path) == asked + 6
    for name in ("qa.jsonl", "replay.jsonl"):
        assert (tmp_path / "again" / name).read_text() == (out / name).read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served_model(assets):
    """`transformers serve` with the tiny model, on loopback; its base URL."""
    port = _free_port()
    log = open(Path(assets["llama"]).parent / f"serve-{port}.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "transformers"), "serve", str(assets["llama"]), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2).read()
            break
        except OSError:
            assert server.poll() is None, Path(log.name).read_text()[-2000:]
            time.sleep(0.5)
    else:
        pytest.fail(f"transformers serve did not answer on {url}: {Path(log.name).read_text()[-2000:]}")
    yield url
    kill_session(server.pid, signal.SIGKILL)
    server.wait()
    log.close()


@pytest.mark.slow
def test_an_openai_compatible_endpoint_on_loopback_generates_and_its_key_is_read_from_the_named_variable(
    tmp_path, assets, served_model, monkeypatch, capsys
):
    monkeypatch.setenv("MY_SYNTH_KEY", "sk-test-never-printed")
    endpoint = [
        f"synth.generator.base_url={served_model}",
        f"synth.generator.model={assets['llama']}",
        "synth.generator.api_key_env=MY_SYNTH_KEY",
    ]
    assert main(_run_args(tmp_path, _overrides(tmp_path, assets, *endpoint))) == 0
    printed = capsys.readouterr().out
    assert "6 generator replies (0 cached)" in printed and "sk-test" not in printed
    assert _cached(tmp_path) == 6
    assert (tmp_path / "out" / "qa.jsonl").read_text()  # the template pairs, whatever the tiny model wrote

    # a missing key variable is named before any request; the key of another never shows
    monkeypatch.delenv("MY_SYNTH_KEY")
    cfg = load_config(None, _overrides(tmp_path, assets, *endpoint, f"output_dir={tmp_path / 'nokey'}", "synth.samples=2"))
    from hone.cluster.run import run

    with pytest.raises(EndpointError, match="MY_SYNTH_KEY is not set"):
        run(cfg)


def test_an_endpoint_that_is_down_fails_fast_naming_its_url(tmp_path, assets):
    url = f"http://127.0.0.1:{_free_port()}/v1"
    cfg = load_config(None, _overrides(tmp_path, assets, f"synth.generator.base_url={url}", "synth.generator.model=m"))
    from hone.cluster.run import run

    started = time.monotonic()
    with pytest.raises(EndpointError, match=f"cannot reach the generator at {url}/chat/completions"):
        run(cfg)
    assert time.monotonic() - started < 30
    assert _cached(tmp_path) == 0

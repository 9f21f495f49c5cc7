"""`hone serve` where vLLM is installed: vLLM's own OpenAI server on the run's model, answered through the
`openai` client with the HF engine's greedy text (vLLM in bf16, so a near tie may fall the other way:
the tiny model below has none in its first tokens)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from hone.training.generation import HfEngine, Sampling, vllm_available
from tests.processes import kill_session
from tests.synth.test_synth_e2e import _free_port
from tests.tiny import make_causal_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.vllm,
    pytest.mark.skipif(not vllm_available(), reason="the vllm package is not installed"),
]


def test_serve_runs_vllms_openai_server_on_the_runs_model(tmp_path):
    from openai import OpenAI

    # The files `hone serve` reads from a finished run (a run's training is tested elsewhere): its model,
    # summary and config. vLLM's CPU attention wants a head size it has kernels for (64 here).
    run = tmp_path / "run"
    model = make_causal_model(run / "model", hidden_size=256, intermediate_size=512, num_layers=2)
    (run / "summary.json").write_text(json.dumps({"mode": "sft", "model_path": str(model)}))
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"source": str(model)}}))

    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    command = [sys.executable, "-m", "hone.cluster.cli", "serve", str(run), "--port", str(port), "--backend", "vllm"]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                listed = json.loads(urllib.request.urlopen(f"{url}/models", timeout=2).read())
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(1)
        assert listed["data"][0]["owned_by"] == "vllm"
        prompt = "<user> copy a b c [EOS] <assistant>"
        reply = OpenAI(base_url=url, api_key="none").completions.create(
            model=str(model), prompt=prompt, max_tokens=6, temperature=0
        )
        expected = HfEngine.load(str(model), dtype="float32").generate([prompt], Sampling(max_new_tokens=6))[0]
        assert reply.choices[0].text.strip() == expected.text.strip()
    finally:
        kill_session(server.pid, signal.SIGKILL)
        server.wait()
        log.close()

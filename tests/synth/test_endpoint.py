"""The OpenAI-compatible generator client against real loopback HTTP servers: a down endpoint, a refused
key, a busy server, malformed replies. (Synthesis through a real model server is tested end to end.)"""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hone.synth.endpoint import Endpoint, EndpointError


def _serve(answers: list[tuple[int, bytes]]):
    """A server that answers each POST with the next (status, body); the last one repeats."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            seen.append(
                {"body": json.loads(self.rfile.read(int(self.headers["Content-Length"]))), "auth": self.headers["Authorization"]}
            )
            status, body = answers.pop(0) if len(answers) > 1 else answers[0]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1", seen


def _reply(text: str) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()


def test_replies_come_back_in_prompt_order_with_the_key_from_the_named_variable(monkeypatch):
    server, url, seen = _serve([(200, _reply("Question: a?\nAnswer: b"))])
    monkeypatch.setenv("GEN_KEY", "sk-test-123")
    try:
        replies = Endpoint(url, "some-model", api_key_env="GEN_KEY", concurrency=2).generate(["one", "two", "three"])
    finally:
        server.shutdown()
    assert replies == ["Question: a?\nAnswer: b"] * 3
    assert sorted(s["body"]["messages"][0]["content"] for s in seen) == ["one", "three", "two"]
    assert {s["auth"] for s in seen} == {"Bearer sk-test-123"} and seen[0]["body"]["model"] == "some-model"


def test_a_down_endpoint_fails_at_once_naming_the_url():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(EndpointError, match=rf"cannot reach the generator at http://127.0.0.1:{port}/v1/chat/completions"):
        Endpoint(f"http://127.0.0.1:{port}/v1", "m").generate(["hi"])
    assert time.monotonic() - started < 5


def test_a_missing_key_variable_is_named_and_a_refused_key_is_never_printed(monkeypatch):
    monkeypatch.delenv("GEN_KEY", raising=False)
    with pytest.raises(EndpointError, match="key variable GEN_KEY is not set"):
        Endpoint("http://127.0.0.1:9/v1", "m", api_key_env="GEN_KEY").generate(["hi"])
    server, url, _ = _serve([(401, b'{"error": "bad key"}')])
    monkeypatch.setenv("GEN_KEY", "sk-secret-value")
    try:
        with pytest.raises(EndpointError, match="refused the key in GEN_KEY: HTTP 401") as err:
            Endpoint(url, "m", api_key_env="GEN_KEY").generate(["hi"])
    finally:
        server.shutdown()
    assert "sk-secret-value" not in str(err.value)


def test_a_busy_server_is_retried_and_a_malformed_reply_becomes_empty(monkeypatch):
    monkeypatch.setattr("hone.synth.endpoint.time.sleep", lambda s: None)  # the backoff, not the behaviour
    server, url, seen = _serve([(503, b"busy"), (200, b"not json"), (200, json.dumps({"choices": []}).encode())])
    try:
        replies = Endpoint(url, "m", concurrency=1).generate(["a", "b"])
    finally:
        server.shutdown()
    assert replies == ["", ""] and len(seen) == 3

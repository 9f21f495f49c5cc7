"""A generator behind any OpenAI-compatible chat endpoint (vLLM's server, `transformers serve`, a hosted API).

The standard library's HTTP client is enough for one POST per prompt; the `openai` package would be a
dependency for that alone. The key comes from an environment variable the config names, never from the
config itself, and no message ever shows it.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from hone.training.errors import HoneError

RETRIES = 3  # for 429 and 5xx: the server is there but busy
CONNECT_TIMEOUT_S = 10.0


class EndpointError(HoneError):
    """The generator endpoint cannot be used: down, refusing the key, or failing every retry."""


@dataclass(frozen=True)
class Endpoint:
    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str
    api_key_env: str = ""  # the environment variable that holds the key; "" for a server that needs none
    max_tokens: int = 512
    temperature: float = 0.7
    concurrency: int = 4
    timeout_s: float = 300.0

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def key(self) -> str:
        if not self.api_key_env:
            return ""
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise EndpointError(
                f"the generator's key variable {self.api_key_env} is not set: export {self.api_key_env}=<your key> "
                "(synth.generator.api_key_env names it; the key never goes in the config)"
            )
        return key

    def generate(self, prompts: list[str]) -> list[str]:
        """One reply per prompt, asked `concurrency` at a time. A reply the server sent but that holds no
        message comes back as "" (counted as malformed later); a server that cannot be reached, or that
        refuses the key, ends synthesis at once with its URL."""
        key = self.key()
        with ThreadPoolExecutor(max_workers=max(self.concurrency, 1)) as pool:
            return list(pool.map(lambda p: self._ask(p, key), prompts))

    def _ask(self, prompt: str, key: str) -> str:
        body: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": prompt}]}
        body |= {"max_tokens": self.max_tokens, "temperature": self.temperature}
        headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
        request = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
        for attempt in range(RETRIES + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return _content(response.read())
            except urllib.error.HTTPError as err:
                if err.code in (401, 403):
                    via = f"the key in {self.api_key_env}" if self.api_key_env else "no key (set synth.generator.api_key_env)"
                    raise EndpointError(f"{self.url} refused {via}: HTTP {err.code}") from None
                if (err.code == 429 or err.code >= 500) and attempt < RETRIES:
                    time.sleep(2**attempt)
                    continue
                raise EndpointError(f"{self.url} answered HTTP {err.code}: {_detail(err)}") from None
            except (urllib.error.URLError, OSError) as err:
                reason = getattr(err, "reason", err)
                raise EndpointError(
                    f"cannot reach the generator at {self.url} ({reason}): is the server running, and is "
                    "synth.generator.base_url right?"
                ) from None
        raise AssertionError("unreachable")


def _content(raw: bytes) -> str:
    try:
        reply: Any = json.loads(raw)
        return str(reply["choices"][0]["message"]["content"] or "")
    except (ValueError, KeyError, IndexError, TypeError):
        return ""


def _detail(err: urllib.error.HTTPError) -> str:
    try:
        return err.read(300).decode("utf-8", "replace").strip() or err.reason
    except OSError:
        return str(err.reason)

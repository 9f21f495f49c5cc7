"""Generated replies by the content that produced them, so a rerun (or a resume after a kill) asks the
generator only for what it has not answered yet.

The key is the chunk's text, the generator's identity and the prompt as sent: editing a paragraph, a
template or the generator invalidates exactly the replies it changes. Each reply is its own file, written
atomically, so a kill mid-synthesis loses at most the replies in flight.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hone.training.files import read_json, write_json


def reply_key(chunk_text: str, generator: str, prompt: str, sample: int = 0) -> str:
    """`sample` tells apart several replies asked for with the same prompt (sampling, not greedy)."""
    payload = json.dumps([chunk_text, generator, prompt, sample], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


class ReplyCache:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> Any:
        """The reply stored under `key`, or None."""
        return read_json(self._path(key))

    def put(self, key: str, reply: Any) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, reply)

    def __contains__(self, key: str) -> bool:
        return self._path(key).exists()

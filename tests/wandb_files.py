"""Read an offline W&B run file (run-*.wandb) without wandb's servers: a LevelDB-style log of protobuf
records (7-byte file header, 32 KiB blocks, each chunk with crc32/length/type header)."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes) -> list[bytes]:
    out, pending, pos = [], b"", 7  # skip the ":W&B" header
    while pos + 7 <= len(data):
        left_in_block = BLOCK - (pos % BLOCK)
        if left_in_block < 7:
            pos += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):
            break  # a record still being written
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            out.append(pending + chunk)
        elif kind == 0 and length == 0:
            pos += BLOCK - (pos % BLOCK) if pos % BLOCK else 0
    return out


def _records(path: Path, timeout_s: float) -> list[Any]:
    """The file's records once its `exit` record is there: wandb's writer process may still be flushing
    the file for a moment after `run.finish()` returns."""
    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.monotonic() + timeout_s
    while True:
        records = []
        for payload in _payloads(path.read_bytes()):
            record = pb.Record()
            record.ParseFromString(payload)
            records.append(record)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def read_run(path: Path, timeout_s: float = 60.0) -> dict[str, Any]:
    """{"config": {...}, "history": [{key: value}], "summary": {...}} from one .wandb file."""
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for record in _records(path, timeout_s):
        kind = record.WhichOneof("record_type")
        if kind == "run":  # the config given to wandb.init travels in the run record
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
            tags = list(record.run.tags)
            config["_group"], config["_tags"] = record.run.run_group, tags
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.summary.update})
    return {"config": config, "history": history, "summary": summary}

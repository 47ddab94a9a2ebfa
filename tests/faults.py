"""Checks shared by the fault and crash tests: what is on disk, and what the stream still owes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import redis

from tasklogger import records
from tasklogger.config import STATE_DIR_NAME


def records_on_disk(logs_dir: Path) -> dict[str, list[dict[str, object]]]:
    """Every JSONL file's records (relative path -> bodies), checking each chain link on the way."""
    out: dict[str, list[dict[str, object]]] = {}
    for path in sorted(p for p in logs_dir.rglob("*.jsonl") if p.is_file()):
        rel = path.relative_to(logs_dir).as_posix()
        data = path.read_bytes()
        assert not data or data.endswith(b"\n"), f"{rel} ends with a partial line"
        prev = records.genesis(rel)
        bodies = []
        for n, line in enumerate(data.splitlines(), start=1):
            record = records.parse_line(line)
            assert record.seq == n, f"{rel}:{n} has seq {record.seq}"
            assert record.hash == records.link(prev, record.canonical), f"{rel}:{n} breaks the chain"
            prev = record.hash
            bodies.append(record.body)
        out[rel] = bodies
    return out


def ids_on_disk(logs_dir: Path) -> Counter[str]:
    """How often each stream id appears in a record (task files, buffers and dead letters)."""
    counts: Counter[str] = Counter()
    for bodies in records_on_disk(logs_dir).values():
        counts.update(str(body["id"]) for body in bodies)
    return counts


def dead_letter_reasons(logs_dir: Path) -> dict[str, str]:
    """Stream id -> dead-letter reason."""
    path = logs_dir / STATE_DIR_NAME / "dead-letters.jsonl"
    if not path.exists():
        return {}
    return {str(b["id"]): str(b["reason"]) for b in (orjson.loads(x) for x in path.read_bytes().splitlines())}


def pending_count(client: redis.Redis, stream: str = "task_events", group: str = "task-logger") -> int:
    return int(client.xpending(stream, group)["pending"])

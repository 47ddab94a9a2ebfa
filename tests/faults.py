"""Checks shared by the fault and crash tests: what is on disk, and what the stream still owes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import redis

from tasklogger import records
from tasklogger.config import STATE_DIR_NAME


def chain(logs_dir: Path, rel: str) -> list[dict[str, Any]]:
    """The bodies of one JSONL file, after checking every line: complete, seq 1..n, each hash linked from genesis."""
    data = (logs_dir / rel).read_bytes()
    assert not data or data.endswith(b"\n"), f"{rel} ends with a partial line"
    prev = records.genesis(rel)
    bodies = []
    for n, line in enumerate(data.splitlines(), start=1):
        record = records.parse_line(line)
        assert record.seq == n, f"{rel}:{n} has seq {record.seq}"
        assert record.hash == records.link(prev, record.canonical), f"{rel}:{n} breaks the chain"
        prev = record.hash
        bodies.append(record.body)
    return bodies


#: The audit trail's own chained files hold digests and checkpoints, not events; ``tasklogger verify`` checks them.
AUDIT_FILES = frozenset({"05-digests.jsonl", "checkpoints.jsonl"})


def records_on_disk(logs_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every JSONL file's event records (relative path -> bodies), each chain checked on the way."""
    return {
        p.relative_to(logs_dir).as_posix(): chain(logs_dir, p.relative_to(logs_dir).as_posix())
        for p in sorted(logs_dir.rglob("*.jsonl"))
        if p.is_file() and p.name not in AUDIT_FILES
    }


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

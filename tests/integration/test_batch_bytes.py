"""Batches are bounded in bytes as well as in entries: a run of large entries is read a few at a time.

MAX_BATCH_SIZE counts entries, and an entry may be up to TASKLOGGER_MAX_ENTRY_BYTES (4 MB by default): a thousand
of them in one XREADGROUP reply would hold gigabytes. The consumer sizes each read from the entries it last read
(docs/operations.md, "Memory").
"""

from __future__ import annotations

from pathlib import Path

import redis

from tasklogger.consumer import FIRST_READ_COUNT, Consumer
from tasklogger.store import CommitResult, Store
from tests.support import ConsumerRun, Publisher, settings_for

BIG = 200_000  # bytes of text in each large entry's data


def drain(redis_url: str, logs_dir: Path, **overrides: int) -> list[CommitResult]:
    """Drain what is in the stream with the real consumer; the results of its commits, in order."""
    settings = settings_for(redis_url, logs_dir, **overrides)
    store = Store(logs_dir)
    store.open()
    results: list[CommitResult] = []
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    run = ConsumerRun(settings, client, store, Consumer(settings, client, store, "bytes", on_commit=results.append))
    run.start()
    try:
        run.wait_drained(60)
    finally:
        run.close()
    return results


def test_a_run_of_large_entries_is_read_a_few_at_a_time(redis_url: str, logs_dir: Path, publisher: Publisher) -> None:
    for n in range(60):
        publisher.event("task:output", task_id="big", data={"n": n, "content": "x" * BIG})
    results = drain(redis_url, logs_dir, max_batch_size=1000, max_batch_bytes=1 << 20)

    sizes = [r.entries for r in results]
    assert sum(sizes) == 60
    lines = (logs_dir / "big" / "03-agent-output.jsonl").read_bytes().splitlines()
    assert len(lines) == 60  # bounded batches, and still every entry exactly once
    # The first read asks for FIRST_READ_COUNT; every later one for what fits in 1 MiB at ~200 KB each.
    assert sizes[0] == FIRST_READ_COUNT
    assert set(sizes[1:]) == {(1 << 20) // (BIG + 100)}  # 5 (the entry's other bytes are under 100)


def test_small_entries_still_come_a_full_batch_at_a_time(redis_url: str, logs_dir: Path, publisher: Publisher) -> None:
    for n in range(1500):
        publisher.event("task:output", task_id=f"small-{n % 7}", data={"n": n, "content": "y" * 300})
    results = drain(redis_url, logs_dir, max_batch_size=500)

    sizes = [r.entries for r in results]
    assert sum(sizes) == 1500
    assert sizes[0] == FIRST_READ_COUNT
    assert max(sizes) == 500  # 4 MiB / ~400 B: the budget never binds, MAX_BATCH_SIZE does


def test_the_size_follows_the_entries(redis_url: str, logs_dir: Path, publisher: Publisher) -> None:
    """Small entries, then large ones, then small ones again: the reads shrink, then grow back."""
    kinds = ["s"] * 300 + ["L"] * 100 + ["s"] * 300
    for n, kind in enumerate(kinds):
        publisher.event("task:output", task_id="mixed", data={"n": n, "content": kind * (BIG if kind == "L" else 100)})
    results = drain(redis_url, logs_dir, max_batch_size=50, max_batch_bytes=1 << 20)

    sizes = [r.entries for r in results]
    assert sum(sizes) == len(kinds)
    # A read sized for small entries may still bring a few large ones (its size is only known afterwards); the
    # reads after it ask for 5, and once small entries come again, for full batches.
    first_small = next(i for i, size in enumerate(sizes) if size <= 5)
    assert max(sizes[first_small:]) == 50
    assert sizes.count(5) >= 5
    numbers = [
        int(line.split(b'"n":')[1].split(b",")[0])
        for line in (logs_dir / "mixed" / "03-agent-output.jsonl").read_bytes().splitlines()
    ]
    assert numbers == list(range(len(kinds)))

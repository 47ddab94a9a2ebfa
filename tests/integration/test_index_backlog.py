"""While the consumer drains a backlog the index waits (for at most its hold time), then catches up in one pass.

The consumer says it is behind when the batch it read while writing the previous one came full; the indexer
process then holds task ids back instead of reading their files between batches.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from tasklogger.consumer import Consumer
from tasklogger.index_worker import IndexerProcess
from tasklogger.store import CommitResult, Store
from tests.support import ConsumerRun, Publisher, settings_for, wait_until


def indexed_tasks(logs_dir: Path) -> set[str]:
    path = logs_dir / ".tasklogger" / "index.sqlite3"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
        return {row[0] for row in conn.execute("SELECT task_id FROM tasks")}


def write_tasks(redis_url: str, logs_dir: Path, publisher: Publisher, task_ids: list[str], *, batch: int = 1000,
                on_commit: list[CommitResult] | None = None) -> None:  # fmt: skip
    """Publish a few events per task, then drain them with the real consumer (MAX_BATCH_SIZE ``batch``)."""
    for task_id in task_ids:
        publisher.event("task:created", task_id=task_id, data={"source": "github", "input_message": task_id})
        publisher.event("task:output", task_id=task_id, data={"content": f"output of {task_id}"})
    settings = settings_for(redis_url, logs_dir, max_batch_size=batch)
    store = Store(logs_dir)
    store.open()
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    consumer = Consumer(
        settings, client, store, "backlog-test", on_commit=None if on_commit is None else on_commit.append
    )
    run = ConsumerRun(settings, client, store, consumer).start()
    try:
        run.wait_drained()
    finally:
        run.close()


def test_the_consumer_reports_a_backlog_while_the_next_batch_comes_full(
    redis_url: str, logs_dir: Path, publisher: Publisher
) -> None:
    results: list[CommitResult] = []
    write_tasks(redis_url, logs_dir, publisher, [f"b-{n}" for n in range(25)], batch=10, on_commit=results)
    assert sum(r.entries for r in results) == 50
    # 50 entries published before the start, 10 a batch: behind while the next batch is full too.
    assert [r.backlog for r in results] == [True, True, True, True, False]


@contextmanager
def held_back(redis_url: str, logs_dir: Path, publisher: Publisher, prefix: str, hold_s: float) -> Iterator[
    tuple[IndexerProcess, set[str]]
]:  # fmt: skip
    """An indexer process that has scanned an empty logs directory, three tasks written since, and their ids
    submitted while the consumer says it is behind; stopped at the end."""
    logs_dir.mkdir(parents=True)
    indexer = IndexerProcess(logs_dir, logs_dir / ".tasklogger" / "index.sqlite3", hold_s=hold_s).start()
    try:
        wait_until(indexer.ready.is_set, what="the indexer's first scan")
        tasks = [f"{prefix}-{n}" for n in range(3)]
        write_tasks(redis_url, logs_dir, publisher, tasks)
        indexer.submit(CommitResult(tasks=set(tasks), backlog=True))
        yield indexer, set(tasks)
    finally:
        indexer.stop()


def test_task_ids_are_held_during_a_backlog_and_indexed_when_it_ends(
    redis_url: str, logs_dir: Path, publisher: Publisher
) -> None:
    with held_back(redis_url, logs_dir, publisher, "h", hold_s=60.0) as (indexer, tasks):
        indexer.submit(CommitResult(tasks=set(), backlog=True))
        time.sleep(1.5)  # three feeding turns
        assert indexed_tasks(logs_dir) == set()
        pending, waited = indexer.lag()
        assert pending == 3 and waited is not None and waited >= 1.0  # the hold shows as index lag
        indexer.submit(CommitResult(tasks=set(), backlog=False))
        wait_until(lambda: indexed_tasks(logs_dir) == tasks, what="the held tasks to be indexed")


def test_a_backlog_holds_task_ids_no_longer_than_the_hold_time(
    redis_url: str, logs_dir: Path, publisher: Publisher
) -> None:
    with held_back(redis_url, logs_dir, publisher, "t", hold_s=1.0) as (_indexer, tasks):
        # The backlog never ends here, yet the tasks are indexed once they have waited the hold time.
        wait_until(lambda: indexed_tasks(logs_dir) == tasks, timeout=10, what="the hold time to run out")


def test_stopping_hands_over_held_task_ids(redis_url: str, logs_dir: Path, publisher: Publisher) -> None:
    with held_back(redis_url, logs_dir, publisher, "s", hold_s=60.0) as (indexer, tasks):
        indexer.stop()
        assert indexed_tasks(logs_dir) == tasks

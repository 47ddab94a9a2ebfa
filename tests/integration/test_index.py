"""The task index is derived data: a corrupt, outdated or deleted index file is moved aside or recreated and
rebuilt from the files; ``tasklogger reindex`` rebuilds it (also under a running service); the rows the live
indexer builds batch by batch equal those of a rebuild from nothing."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from tasklogger.index import Query, Reader
from tasklogger.indexer import rebuild
from tests.integration.http_helpers import request
from tests.support import Publisher, ServiceProcess, gone, group_drained, wait_until


def publish_tasks(pub: Publisher, prefix: str, count: int, *, outputs: int = 3) -> None:
    for n in range(count):
        task_id = f"{prefix}-{n}"
        pub.event("task:created", task_id=task_id, data={"source": "github", "input_message": f"task {prefix} {n}"})
        for k in range(outputs):
            pub.event("task:output", task_id=task_id, data={"content": f"output {k} of {prefix}"})
        if n % 2 == 0:
            pub.event("task:completed", task_id=task_id, data={"result": "ok", "cost_usd": n})


def listed(port: int, **params: Any) -> list[dict[str, Any]]:
    query = "&".join(f"{k}={v}" for k, v in {"limit": 500, **params}.items())
    answer = request(port, "/tasks?" + query)
    return answer.json()["tasks"] if answer.status == 200 else []


def index_file(logs_dir: Path) -> Path:
    return logs_dir / ".tasklogger" / "index.sqlite3"


def test_a_corrupt_index_is_moved_aside_and_rebuilt(publisher: Publisher, redis_url: str, logs_dir: Path) -> None:
    proc = ServiceProcess(logs_dir, redis_url).start()
    publish_tasks(publisher, "c", 5)
    wait_until(lambda: group_drained(publisher.client), what="drained")
    wait_until(lambda: len(listed(proc.port)) == 5, what="5 tasks indexed")
    proc.terminate()

    index_file(logs_dir).write_bytes(b"this is not a database" * 500)
    for suffix in ("-wal", "-shm"):
        Path(f"{index_file(logs_dir)}{suffix}").unlink(missing_ok=True)
    proc = ServiceProcess(logs_dir, redis_url).start()
    try:
        wait_until(lambda: len(listed(proc.port)) == 5, what="the index to be rebuilt from the files")
        aside = list(index_file(logs_dir).parent.glob("index.sqlite3.corrupt-*"))
        assert aside and aside[0].read_bytes().startswith(b"this is not a database")
        assert "task index unusable" in proc.output()
    finally:
        proc.kill()


def test_an_index_of_another_schema_version_is_rebuilt(publisher: Publisher, redis_url: str, logs_dir: Path) -> None:
    proc = ServiceProcess(logs_dir, redis_url).start()
    publish_tasks(publisher, "v", 3)
    wait_until(lambda: len(listed(proc.port)) == 3, what="3 tasks indexed")
    proc.terminate()
    with sqlite3.connect(index_file(logs_dir)) as conn:
        conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
        conn.execute("DELETE FROM tasks")
    conn.close()

    proc = ServiceProcess(logs_dir, redis_url).start()
    try:
        wait_until(lambda: len(listed(proc.port)) == 3, what="the index to be rebuilt")
    finally:
        proc.kill()


def test_deleting_the_index_while_running_loses_nothing(publisher: Publisher, redis_url: str, logs_dir: Path) -> None:
    proc = ServiceProcess(logs_dir, redis_url).start()
    try:
        publish_tasks(publisher, "d", 4)
        wait_until(lambda: len(listed(proc.port)) == 4, what="4 tasks indexed")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{index_file(logs_dir)}{suffix}").unlink(missing_ok=True)
        publish_tasks(publisher, "e", 2)
        wait_until(lambda: len(listed(proc.port)) == 6, what="a new index with every task")
        assert {t["task_id"] for t in listed(proc.port, q="output")} >= {"d-0", "e-1"}
    finally:
        proc.kill()


def test_reindex_command_rebuilds_under_a_running_service(publisher: Publisher, redis_url: str, logs_dir: Path) -> None:
    proc = ServiceProcess(logs_dir, redis_url).start()
    try:
        publish_tasks(publisher, "r", 12, outputs=5)
        wait_until(lambda: group_drained(publisher.client), what="drained")
        wait_until(lambda: len(listed(proc.port)) == 12, what="12 tasks indexed")
        live = sorted(listed(proc.port), key=lambda t: t["task_id"])

        done = subprocess.run(
            [sys.executable, "-m", "tasklogger", "reindex", "--logs-dir", str(logs_dir)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "indexed 12 tasks, 78 records" in done.stdout

        rebuilt = sorted(listed(proc.port), key=lambda t: t["task_id"])
        assert rebuilt == live
        # The service switched to the new file and keeps it up to date.
        publisher.event("task:output", task_id="r-1", data={"content": "after the rebuild"})
        wait_until(
            lambda: [t["task_id"] for t in listed(proc.port, q="rebuild")] == ["r-1"], what="the new file updated"
        )
    finally:
        proc.kill()


def test_reindex_of_a_missing_logs_dir_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tasklogger", "reindex", "--logs-dir", str(tmp_path / "absent")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith("tasklogger: logs directory")


def test_rows_built_batch_by_batch_equal_a_rebuild(publisher: Publisher, redis_url: str, logs_dir: Path) -> None:
    """Each record is read once: many small batches over the same tasks give the same rows as one rebuild."""
    proc = ServiceProcess(logs_dir, redis_url, env={"MAX_BATCH_SIZE": "3"}).start()
    try:
        for round_ in range(6):
            for n in range(4):
                publisher.event("task:output", task_id=f"b-{n}", data={"content": f"round {round_} word{round_}x{n}"})
            publisher.event("task:tool_call", task_id="b-0", data={"name": f"tool_{round_}"})
        publisher.event("task:completed", task_id="b-2", data={"result": "fine", "exit_code": "0"})
        wait_until(lambda: group_drained(publisher.client), what="drained")
        wait_until(lambda: sum(t["events"]["total"] for t in listed(proc.port)) == 31, what="31 records indexed")
        live = {t["task_id"]: t for t in listed(proc.port)}
    finally:
        proc.kill()

    fresh = logs_dir.parent / "fresh.sqlite3"
    tasks, records = rebuild(logs_dir, fresh)
    rows, _ = Reader(fresh).search(Query(limit=500))

    assert (tasks, records) == (4, 31)
    assert live["b-2"]["integrity"]["sealed"] and not live["b-0"]["integrity"]["sealed"]  # read from the files
    assert {t["task_id"]: t for t in rows} == {task: {**row, "integrity": None} for task, row in live.items()}
    assert live["b-0"]["events"]["agent_output"] == 12
    found, _ = Reader(fresh).search(Query(q="word5x3"))
    assert [t["task_id"] for t in found] == ["b-3"]
    found, _ = Reader(fresh).search(Query(q="tool_4"))
    assert [t["task_id"] for t in found] == ["b-0"]


def test_the_api_alone_follows_a_consumer_running_elsewhere(
    publisher: Publisher, redis_url: str, logs_dir: Path
) -> None:
    # The consumer keeps no index here, so only the API process's own rescans can find the new tasks.
    env = {"TASKLOGGER_INDEX": "0"}
    consumer = ServiceProcess(logs_dir, redis_url, args=("consume",), env=env).start(wait_healthy=False)
    api = None
    try:
        publish_tasks(publisher, "x", 3)
        wait_until(lambda: group_drained(publisher.client), what="the consumer to drain")
        api = ServiceProcess(logs_dir, redis_url, args=("api",)).start()
        wait_until(lambda: len(listed(api.port)) == 3, what="the API process to list the tasks")
        publish_tasks(publisher, "y", 2)
        wait_until(lambda: len(listed(api.port)) == 5, timeout=30, what="the API process to see new tasks")
    finally:
        consumer.kill()
        if api is not None:
            api.kill()


def test_a_killed_indexer_process_is_replaced_and_catches_up(
    publisher: Publisher, redis_url: str, logs_dir: Path
) -> None:
    proc = ServiceProcess(logs_dir, redis_url).start()
    try:
        publish_tasks(publisher, "k", 2)
        wait_until(lambda: len(listed(proc.port)) == 2, what="2 tasks indexed")
        assert proc.process is not None
        workers = [c for c in psutil.Process(proc.process.pid).children() if "index_worker" in " ".join(c.cmdline())]
        assert len(workers) == 1
        workers[0].kill()
        wait_until(lambda: gone(workers[0]), what="the indexer process to die")
        publish_tasks(publisher, "l", 3)
        wait_until(lambda: len(listed(proc.port)) == 5, timeout=30, what="a new indexer process to catch up")
        assert "indexer process ended" in proc.output()
    finally:
        proc.kill()


def test_without_an_index_tasks_is_503_and_a_summary_comes_from_the_files(
    publisher: Publisher, redis_url: str, logs_dir: Path
) -> None:
    proc = ServiceProcess(logs_dir, redis_url, env={"TASKLOGGER_INDEX": "0"}).start()
    try:
        publish_tasks(publisher, "n", 1, outputs=4)
        wait_until(lambda: group_drained(publisher.client), what="drained")

        listing = request(proc.port, "/tasks")
        summary = request(proc.port, "/tasks/n-0")

        assert listing.status == 503 and "not built" in listing.json()["detail"]
        assert summary.status == 200
        body = summary.json()
        assert body["status"] == "completed" and body["events"]["agent_output"] == 6 and body["cost_usd"] == 0.0
        assert not index_file(logs_dir).exists()
    finally:
        proc.kill()

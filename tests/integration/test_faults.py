"""Transient faults with the real mechanisms: a stopped, paused, emptied or restarted Redis; a full tmpfs; an
immutable directory; an entry that fails every time. Nothing acknowledged is lost, nothing is duplicated, and the
consumer comes back by itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from tasklogger.api import Runtime, health_report, metrics_snapshot
from tasklogger.audit.verify import verify_logs_dir
from tests.faults import dead_letter_reasons, ids_on_disk, pending_count, records_on_disk
from tests.support import (
    ConsumerRun,
    Publisher,
    RedisProcess,
    ServiceProcess,
    consumer_run,
    group_drained,
    settings_for,
    wait_until,
)


def probe(run: ConsumerRun) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """What /health (status, body) and /metrics answer about this consumer, as a probe or a scraper sees it."""
    api_client = redis.Redis.from_url(run.settings.redis_url or "", socket_timeout=1)
    try:
        runtime = Runtime(run.settings, api_client, run.consumer)
        status, body = health_report(runtime)
        return status, body, metrics_snapshot(runtime)
    finally:
        api_client.close()


def publish_task(publisher: Publisher, task_id: str, outputs: int, size: int = 200) -> list[str]:
    ids = [publisher.event("task:created", task_id=task_id, data={"source": "github", "agent_type": "coder"})]
    for n in range(outputs):
        ids.append(publisher.event("task:output", task_id=task_id, data={"content": f"{n}:" + "x" * size}))
    return ids


def test_redis_paused_then_back(private_redis: RedisProcess, logs_dir: Path) -> None:
    client = private_redis.client()
    publisher = Publisher(client)
    published = publish_task(publisher, "t-pause", 20)
    with consumer_run(settings_for(private_redis.url, logs_dir)) as run:
        run.wait_drained()
        private_redis.pause()
        try:
            wait_until(lambda: run.consumer.stats.fault == "redis_unreachable", timeout=15, what="the fault")
            status, health, _metrics = probe(run)
            assert status == 503 and "redis_unreachable" in health["reasons"]
            errors_during = run.consumer.stats.errors.get("redis_unreachable", 0)
            time.sleep(3)
            # Capped back-off: a handful of attempts over seconds, not a busy loop.
            assert run.consumer.stats.errors.get("redis_unreachable", 0) - errors_during < 10
        finally:
            private_redis.resume()
        resumed_at = time.monotonic()
        published += publish_task(publisher, "t-pause", 20)
        run.wait_drained(timeout=15)
        assert time.monotonic() - resumed_at < 5
        wait_until(lambda: run.consumer.stats.fault is None, timeout=5, what="recovery")
        assert probe(run)[0] == 200
    counts = ids_on_disk(logs_dir)
    assert sorted(counts) == sorted(published)
    assert set(counts.values()) == {1}
    client.close()


def test_redis_restarted_empty_recreates_the_group(private_redis: RedisProcess, logs_dir: Path) -> None:
    client = private_redis.client()
    first = publish_task(Publisher(client), "t-before", 5)
    with consumer_run(settings_for(private_redis.url, logs_dir)) as run:
        run.wait_drained()
        before = (logs_dir / "t-before" / "03-agent-output.jsonl").read_bytes()
        private_redis.kill()
        private_redis.wipe()
        private_redis.start()
        client = private_redis.client()
        second = publish_task(Publisher(client), "t-after", 5)
        run.wait_drained(timeout=20)
    assert (logs_dir / "t-before" / "03-agent-output.jsonl").read_bytes() == before
    counts = ids_on_disk(logs_dir)
    # Entry ids restart with the new server's clock, so the check is per task.
    assert [b["id"] for b in records_on_disk(logs_dir)["t-after/03-agent-output.jsonl"]] == second
    assert [b["id"] for b in records_on_disk(logs_dir)["t-before/03-agent-output.jsonl"]] == first
    assert set(counts.values()) == {1}
    client.close()


def test_redis_restarted_with_pending_entries(private_redis: RedisProcess, logs_dir: Path) -> None:
    settings = settings_for(private_redis.url, logs_dir, consumer_name="logger-1")
    client = private_redis.client()
    published = publish_task(Publisher(client), "t-aof", 30)
    client.xgroup_create("task_events", "task-logger", id="0")
    # Delivered to our consumer name but never acknowledged, as if the service died after reading.
    client.xreadgroup("task-logger", "logger-1", {"task_events": ">"}, count=10)
    assert pending_count(client) == 10
    client.close()
    private_redis.stop()  # graceful: the AOF holds the stream, the group and its pending list
    private_redis.start()
    client = private_redis.client()
    assert pending_count(client) == 10
    with consumer_run(settings) as run:
        run.wait_drained()
    counts = ids_on_disk(logs_dir)
    assert [b["id"] for b in records_on_disk(logs_dir)["t-aof/03-agent-output.jsonl"]] == published
    assert set(counts.values()) == {1}
    assert pending_count(client) == 0
    client.close()


def test_redis_killed_mid_drain(private_redis: RedisProcess, logs_dir: Path) -> None:
    client = private_redis.client()
    publisher = Publisher(client)
    published: list[str] = []
    for n in range(10):
        published += publish_task(publisher, f"t-kill-{n}", 150, size=1000)
    with consumer_run(settings_for(private_redis.url, logs_dir, max_batch_size=100)) as run:
        wait_until(lambda: run.consumer.stats.batches >= 2, timeout=10, what="the drain to start")
        private_redis.kill()  # appendfsync always: every acknowledged XACK and every XADD survives
        time.sleep(1)
        private_redis.start()
        client = private_redis.client()
        run.client = client
        run.wait_drained(timeout=30)
    counts = ids_on_disk(logs_dir)
    assert sorted(counts) == sorted(published)
    assert set(counts.values()) == {1}
    client.close()


def test_disk_full_waits_and_resumes(
    redis_url: str, client: redis.Redis, publisher: Publisher, tiny_disk: Path
) -> None:
    logs_dir = tiny_disk / "logs"
    filler = tiny_disk / "filler"
    published: list[str] = []
    with consumer_run(settings_for(redis_url, logs_dir)) as run:
        published += publish_task(publisher, "t-full", 5)
        run.wait_drained()
        filler.write_bytes(b"\0" * (int(2.9 * 1024 * 1024) - sum(f.stat().st_size for f in logs_dir.rglob("*"))))
        published += publish_task(publisher, "t-full", 200, size=2000)  # ~400 KB: cannot fit
        wait_until(lambda: run.consumer.stats.fault == "disk_full", timeout=15, what="disk_full")
        assert pending_count(client) > 0  # nothing of the failed batch was acknowledged
        status, health, metrics = probe(run)
        assert status == 503 and "disk_full" in health["reasons"]
        assert metrics["errors"]["disk_full"] >= 1 and metrics["oldest_pending_age_seconds"] is not None
        data = (logs_dir / "t-full" / "03-agent-output.jsonl").read_bytes()
        assert data.endswith(b"\n")  # the failed append was cut back: no partial line
        time.sleep(1)
        filler.unlink()
        run.wait_drained(timeout=20)
        wait_until(lambda: run.consumer.stats.fault is None, timeout=5, what="recovery")
    counts = ids_on_disk(logs_dir)
    assert sorted(counts) == sorted(published)
    assert set(counts.values()) == {1}


def test_immutable_task_directory_waits_and_resumes(
    redis_url: str, client: redis.Redis, publisher: Publisher, logs_dir: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("chattr +i needs root")
    published = publish_task(publisher, "t-locked", 3)
    with consumer_run(settings_for(redis_url, logs_dir)) as run:
        run.wait_drained()
        task_dir = logs_dir / "t-locked"
        subprocess.run(["chattr", "+i", str(task_dir / "03-agent-output.jsonl")], check=True)
        try:
            published += publish_task(publisher, "t-locked", 3)
            wait_until(lambda: run.consumer.stats.fault == "disk_permission_denied", timeout=15, what="EPERM")
            assert pending_count(client) > 0
        finally:
            subprocess.run(["chattr", "-i", str(task_dir / "03-agent-output.jsonl")], check=True)
        run.wait_drained(timeout=20)
    counts = ids_on_disk(logs_dir)
    assert sorted(counts) == sorted(published)
    assert set(counts.values()) == {1}


def test_entry_that_always_fails_is_dead_lettered_and_the_rest_flows(
    redis_url: str, client: redis.Redis, publisher: Publisher, logs_dir: Path
) -> None:
    # A directory where the task's JSONL file belongs: every attempt to write this task fails (EISDIR).
    (logs_dir / "t-poison" / "03-agent-output.jsonl").mkdir(parents=True)
    good_before = publish_task(publisher, "t-good", 3)
    poison = publisher.event("task:output", task_id="t-poison", data={"content": "never fits"})
    good_after = publish_task(publisher, "t-good-2", 3)
    settings = settings_for(redis_url, logs_dir, max_deliveries=3)
    with consumer_run(settings) as run:
        run.wait_drained(timeout=30)
    reasons = dead_letter_reasons(logs_dir)
    assert reasons == {poison: "processing_error"}
    counts = ids_on_disk(logs_dir)
    assert all(counts[i] == 1 for i in good_before + good_after)
    assert pending_count(client) == 0


def test_permission_denied_waits_and_resumes(
    redis_url: str, client: redis.Redis, publisher: Publisher, logs_dir: Path
) -> None:
    """EACCES for real: the service runs as root without CAP_DAC_OVERRIDE, so file modes apply to it."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux)")
    prefix = (setpriv, "--bounding-set=-dac_override,-dac_read_search")
    service = ServiceProcess(logs_dir, redis_url, prefix=prefix).start()
    try:
        published = publish_task(publisher, "t-eacces", 3)
        wait_until(lambda: group_drained(client), what="the first events")
        task_dir = logs_dir / "t-eacces"
        (task_dir / "03-agent-output.jsonl").chmod(0o400)
        task_dir.chmod(0o500)
        try:
            published += publish_task(publisher, "t-eacces", 3)
            wait_until(
                lambda: "disk_permission_denied" in (service.get("/health")[1] or {}).get("reasons", []),
                what="/health to report disk_permission_denied",
            )
            assert service.get("/health")[0] == 503
            assert pending_count(client) > 0
            assert service.get("/metrics")[1]["errors"]["disk_permission_denied"] >= 1
        finally:
            task_dir.chmod(0o755)
            (task_dir / "03-agent-output.jsonl").chmod(0o644)
        wait_until(lambda: group_drained(client), timeout=20, what="the drain after the fix")
        wait_until(lambda: service.get("/health")[0] == 200, what="/health to recover")
    finally:
        service.kill()
    counts = ids_on_disk(logs_dir)
    assert sorted(counts) == sorted(published)
    assert set(counts.values()) == {1}


@pytest.fixture
def eio_disk(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A FUSE passthrough (tests/faultfs.py) whose writes and fsyncs fail with EIO while a flag file exists."""
    if os.geteuid() != 0 or not Path("/dev/fuse").exists() or shutil.which("fusermount3") is None:
        pytest.skip("needs root, /dev/fuse and fuse3 (CI installs them)")
    backing, mountpoint, flag = tmp_path / "backing", tmp_path / "mnt", tmp_path / "eio"
    backing.mkdir()
    mountpoint.mkdir()
    script = Path(__file__).resolve().parents[1] / "faultfs.py"
    fs = subprocess.Popen([sys.executable, str(script), str(backing), str(mountpoint), str(flag)])
    try:
        wait_until(lambda: os.path.ismount(mountpoint), timeout=10, what="the FUSE mount")
        yield mountpoint, flag
    finally:
        flag.unlink(missing_ok=True)
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
        try:
            fs.wait(10)
        except subprocess.TimeoutExpired:
            fs.kill()


def test_io_errors_wait_and_resume(
    redis_url: str, client: redis.Redis, publisher: Publisher, eio_disk: tuple[Path, Path]
) -> None:
    """EIO on write and fsync for real: nothing of the failed batch is acknowledged, no partial line is left,
    the batch is written again (on new descriptors) once the disk answers."""
    mountpoint, flag = eio_disk
    logs_dir = mountpoint / "logs"
    with consumer_run(settings_for(redis_url, logs_dir)) as run:
        published = publish_task(publisher, "t-eio", 3)
        run.wait_drained()
        flag.touch()
        published += publish_task(publisher, "t-eio", 20)
        published += publish_task(publisher, "t-eio-new", 2)
        wait_until(lambda: run.consumer.stats.fault == "disk_io_error", timeout=15, what="disk_io_error")
        status, health, _metrics = probe(run)
        assert status == 503 and "disk_io_error" in health["reasons"]
        assert pending_count(client) > 0
        time.sleep(0.5)
        flag.unlink()
        run.wait_drained(timeout=20)
    for path in logs_dir.rglob("*.jsonl"):
        assert path.read_bytes().endswith(b"\n")
    counts = ids_on_disk(logs_dir)
    assert sorted(counts) == sorted(published)
    assert set(counts.values()) == {1}


def test_a_checkpoint_during_a_disk_fault_records_the_views_as_they_are_on_disk(
    redis_url: str, publisher: Publisher, tiny_disk: Path
) -> None:
    """A batch that failed after replacing a view (ENOSPC on its appends) left the new view on disk; a checkpoint
    taken before its retry records that view as it is, so verifying the directory meanwhile finds nothing wrong."""
    logs_dir = tiny_disk / "logs"
    filler = tiny_disk / "filler"
    with consumer_run(settings_for(redis_url, logs_dir)) as run:
        publisher.event("task:created", task_id="t-view", data={"input_message": "first", "source": "api"})
        run.wait_drained()
        run.store.audit.checkpoint("before")
        filler.write_bytes(b"\0" * (int(2.9 * 1024 * 1024) - sum(f.stat().st_size for f in logs_dir.rglob("*"))))
        # One transaction, so that the view change and ~400 KB of records (which cannot fit) are one batch.
        pipe = redis.Redis.from_url(redis_url).pipeline(transaction=True)
        context = {"enriched_prompt": "with context"}
        pipe.xadd("task_events", {"type": "task:context_built", "task_id": "t-view", "data": orjson.dumps(context)})
        for n in range(200):
            pipe.xadd(
                "task_events",
                {"type": "task:output", "task_id": "t-view", "data": orjson.dumps({"n": n, "x": "x" * 2000})},
            )
        pipe.execute()
        wait_until(lambda: run.consumer.stats.fault == "disk_full", timeout=15, what="disk_full")
        view = orjson.loads((logs_dir / "t-view" / "01-input.json").read_bytes())
        assert view["enriched_prompt"] == "with context"  # replaced before the appends failed
        run.store.audit.checkpoint("during the fault")
        report = verify_logs_dir(logs_dir)
        assert report.ok, report.problems
        filler.unlink()
        run.wait_drained(timeout=20)
    assert verify_logs_dir(logs_dir).ok

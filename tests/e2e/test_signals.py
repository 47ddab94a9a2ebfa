"""SIGTERM while a 100k backlog drains: the batch in hand is finished and acknowledged, the process exits 0 within
5 s, and a restart continues exactly where it stopped."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import redis

from tests.faults import ids_on_disk, pending_count
from tests.support import RedisProcess, ServiceProcess, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from workload import interleaved, publish


def _acked(client: redis.Redis) -> int:
    info = client.xinfo_groups("task_events")[0]
    return int(info["entries-read"] or 0) - int(info["pending"])


def test_sigterm_mid_drain_exits_0_and_restart_resumes(tmp_path: Path) -> None:
    redis_proc = RedisProcess(tmp_path / "redis", appendonly=False).start()
    client = redis_proc.client()
    logs_dir = tmp_path / "logs"
    try:
        published = publish(client, interleaved(100_000, seed=3))
        service = ServiceProcess(logs_dir, redis_proc.url, args=("consume",)).start(wait_healthy=False)
        wait_until(lambda: _group_ready(client) and _acked(client) > 5_000, timeout=60, what="the drain to start")

        sent_at = time.monotonic()
        code = service.terminate(timeout=10)
        took = time.monotonic() - sent_at

        assert code == 0, service.output()[-2000:]
        assert took < 5.0
        assert pending_count(client) == 0  # the batch in hand was finished and acknowledged
        stopped_at = _acked(client)
        assert stopped_at < len(published)  # it really stopped mid-drain

        restarted = ServiceProcess(logs_dir, redis_proc.url, args=("consume",)).start(wait_healthy=False)
        try:
            wait_until(lambda: _acked(client) == len(published), timeout=120, what="the restart to finish")
        finally:
            assert restarted.terminate() == 0
        counts = ids_on_disk(logs_dir)
        assert len(counts) == len(published)
        assert set(counts.values()) == {1}
    finally:
        client.close()
        redis_proc.kill()


def _group_ready(client: redis.Redis) -> bool:
    try:
        return bool(client.xinfo_groups("task_events"))
    except redis.ResponseError:
        return False

"""Live latency: publish at a steady rate to a running service and measure, for each entry, the time from just
before its XADD until the service has fsynced it and acknowledged it (it acknowledges only after the fsync).
Task events and webhook steps (entries with a webhook_event_id) are reported apart.

    python bench/latency.py --rate 1000 --seconds 20
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import redis
from common import RedisProcess, RssSampler, Service, machine, wait
from workload import interleaved

from tasklogger.records import stream_id_key


class AckWatcher(threading.Thread):
    """Notes when each sent entry becomes durable: delivered to the group and no longer pending. The service
    acknowledges an entry only after its batch is fsynced, so that moment is an upper bound of XADD-to-disk."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.waiting: list[str] = []
        self.durable: dict[str, float] = {}
        self.lock = threading.Lock()
        self.halt = threading.Event()

    def expect(self, entry_id: str) -> None:
        with self.lock:
            self.waiting.append(entry_id)

    def run(self) -> None:
        while not self.halt.is_set():
            with self.lock:
                waiting = list(self.waiting)
            if waiting:
                groups = self.client.xinfo_groups("task_events")
                pending = self.client.xpending_range("task_events", "task-logger", "-", "+", 100_000)
                now = time.perf_counter()
                last = stream_id_key(groups[0]["last-delivered-id"].decode()) if groups else (0, 0)
                still = {row["message_id"].decode() for row in pending}
                done = [i for i in waiting if stream_id_key(i) <= last and i not in still]
                with self.lock:
                    for entry_id in done:
                        self.durable[entry_id] = now
                    gone = set(done)
                    self.waiting = [i for i in self.waiting if i not in gone]
            time.sleep(0.0005)


def _group_exists(client: redis.Redis) -> bool:
    try:
        return bool(client.xinfo_groups("task_events"))
    except redis.ResponseError:
        return False


def percentiles(values: list[float]) -> str:
    if not values:
        return "no samples"
    ms = sorted(v * 1000 for v in values)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return f"n={len(ms)} p50={q[49]:.2f} ms p90={q[89]:.2f} ms p99={q[98]:.2f} ms max={ms[-1]:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    total = int(args.rate * args.seconds)

    work = Path(tempfile.mkdtemp(prefix="tl-latency-"))
    redis_proc = RedisProcess(work / "redis", appendonly=False).start()
    logs = work / "logs"
    service = Service(logs, redis_proc.url).start()
    assert service.process is not None
    client = redis_proc.client()
    watcher = AckWatcher(redis_proc.client())
    try:
        wait(lambda: _group_exists(client), 20)
        time.sleep(1.0)  # let the consumer reach its blocking read
        watcher.start()
        sampler = RssSampler(service.process.pid)
        sampler.start()
        sent: dict[str, tuple[float, str]] = {}
        interval = 1.0 / args.rate
        next_at = time.perf_counter()
        for fields in interleaved(total, seed=5):
            kind = "webhook" if "webhook_event_id" in fields else "task"
            while (delay := next_at - time.perf_counter()) > 0:
                time.sleep(min(delay, 0.0005))
            started = time.perf_counter()
            entry_id = client.xadd("task_events", fields).decode()  # type: ignore[arg-type]
            sent[entry_id] = (started, kind)
            watcher.expect(entry_id)
            next_at += interval
        wait(lambda: len(watcher.durable) >= len(sent), 30)
        peak = sampler.stop()
        by_kind: dict[str, list[float]] = {"task": [], "webhook": []}
        for entry_id, (started, kind) in sent.items():
            if entry_id in watcher.durable:
                by_kind[kind].append(watcher.durable[entry_id] - started)
        unseen = len(sent) - sum(len(v) for v in by_kind.values())
        print(f"latency at {args.rate:.0f} events/s for {args.seconds:.0f}s (XADD until fsynced and acknowledged):")
        print(f"  task events:   {percentiles(by_kind['task'])}")
        print(f"  webhook steps: {percentiles(by_kind['webhook'])}")
        print(f"  never acknowledged: {unseen}")
        print(f"  peak RSS {peak / 2**20:.1f} MB; machine: {machine(work)}")
    finally:
        watcher.halt.set()
        service.stop()
        redis_proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

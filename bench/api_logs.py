"""Logs benchmark: ``GET /tasks/{id}/logs`` of a task with 20,000 records, from a real ``tasklogger serve``.

A task of ``--records`` task:output events (bodies of the realistic sizes of bench/workload.py: mostly 100 B-4 KB,
1 % of 10-100 KB) is published to a private redis-server and consumed by the service; then the whole compat
object is fetched ``--runs`` times. For each fetch: time to the first byte of the body, total time, bytes; and the
service's RSS, sampled every 10 ms, before the fetches and at its peak during them. Run with a smaller and a larger
``--records`` to see that the RSS does not grow with the task.

    python bench/api_logs.py --records 20000
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from common import RedisProcess, RssSampler, Service, group_drained, machine, wait


def body_size(rng: random.Random) -> int:
    """The workload's body sizes: 1 % large (10-100 KB), else 100 B-4 KB."""
    return rng.randint(10_000, 100_000) if rng.random() < 0.01 else rng.randint(100, 4_000)


def publish(client: object, task_id: str, records: int, seed: int) -> int:
    """The task's events, pipelined; returns the bytes of content published."""
    rng = random.Random(seed)
    total = 0
    pipe = client.pipeline(transaction=False)  # type: ignore[attr-defined]
    created = {"source": "github", "assigned_agent": "coder", "input_message": "a long task"}
    pipe.xadd("task_events", {"type": "task:created", "task_id": task_id, "data": json.dumps(created)})
    for n in range(records - 1):
        text = "".join(rng.choice("abcdefghij klmnop qrstuv wxyz") for _ in range(body_size(rng)))
        total += len(text)
        pipe.xadd("task_events", {"type": "task:output", "task_id": task_id, "data": json.dumps({"content": text})})
        if n % 1000 == 999:
            pipe.execute()
    pipe.execute()
    return total


def fetch(port: int, path: str) -> tuple[float, float, int]:
    """(seconds to the first body byte, seconds in total, bytes) of one GET."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    started = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    first = response.read(1)
    ttfb = time.perf_counter() - started
    size = len(first)
    while chunk := response.read(1 << 16):
        size += len(chunk)
    total = time.perf_counter() - started
    conn.close()
    if response.status != 200:
        raise SystemExit(f"HTTP {response.status}")
    return ttfb, total, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir, removed)")
    args = parser.parse_args()

    work = args.dir or Path(tempfile.mkdtemp(prefix="tl-logs-"))
    logs = work / "logs"
    redis_proc = RedisProcess(work / "redis", appendonly=False)
    service: Service | None = None
    try:
        redis_proc.start()
        client = redis_proc.client()
        content = publish(client, "big-task", args.records, args.seed)
        service = Service(logs, redis_proc.url, command="serve").start()
        assert service.process is not None
        port = int(service.env["PORT"])
        if not wait(lambda: group_drained(client), 600):
            raise SystemExit(f"not drained; see {service.log}")
        file_size = (logs / "big-task" / "03-agent-output.jsonl").stat().st_size
        print(f"task: {args.records:,} records, {content / 2**20:.1f} MB of content, 03-agent-output.jsonl "
              f"{file_size / 2**20:.1f} MB")  # fmt: skip
        time.sleep(1.0)  # the indexer reads the task once
        sampler = RssSampler(service.process.pid, interval=0.01)
        baseline = sampler.process.memory_info().rss
        sampler.start()
        fetch(port, "/tasks/big-task/logs")  # warm the page cache: the figures are the API's, not the disk's
        after_first = sampler.peak
        ttfbs, totals = [], []
        size = 0
        for _ in range(args.runs):
            ttfb, total, size = fetch(port, "/tasks/big-task/logs")
            ttfbs.append(ttfb * 1000)
            totals.append(total)
        peak = sampler.stop()
        ttfbs.sort()
        median_total = statistics.median(totals)
        print(
            f"GET /tasks/big-task/logs x{args.runs}: {size / 2**20:.1f} MB each; time to first byte p50 "
            f"{statistics.median(ttfbs):.1f} ms, max {ttfbs[-1]:.1f} ms; whole body p50 {median_total:.2f} s "
            f"({size / 2**20 / median_total:.0f} MB/s)"
        )
        print(
            f"service RSS: {baseline / 2**20:.1f} MB before, peak {after_first / 2**20:.1f} MB during the first fetch, "
            f"{peak / 2**20:.1f} MB after {args.runs} more (a {size / 2**20:.0f} MB answer each)"
        )
        print(f"machine: {machine(logs)}")
    finally:
        if service is not None:
            service.kill()
        redis_proc.kill()
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

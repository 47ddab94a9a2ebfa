"""Drain benchmark: a backlog published before the consumer starts; events/s to drain it, and peak RSS.

python bench/drain.py --events 100000
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from common import RedisProcess, RssSampler, Service, drained, machine, wait
from workload import interleaved, publish


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=None, help="MAX_BATCH_SIZE for the service")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()

    work = args.dir or Path(tempfile.mkdtemp(prefix="tl-drain-"))
    redis_proc = RedisProcess(work / "redis", appendonly=False).start()
    service = None
    try:
        client = redis_proc.client()
        started = time.perf_counter()
        publish(client, interleaved(args.events))
        print(f"published {args.events} events in {time.perf_counter() - started:.1f}s")
        env = {"MAX_BATCH_SIZE": str(args.batch)} if args.batch else {}
        service = Service(work / "logs", redis_proc.url, env=env).start()
        assert service.process is not None
        sampler = RssSampler(service.process.pid)
        sampler.start()
        started = time.perf_counter()
        if not wait(lambda: drained(client), args.timeout, interval=0.02):
            raise SystemExit(f"not drained within {args.timeout}s; see {service.log}")
        elapsed = time.perf_counter() - started
        peak = sampler.stop()
        cpu = sampler.process.cpu_times()
        disk = sum(f.stat().st_size for f in (work / "logs").rglob("*") if f.is_file())
        print(
            f"drain: {args.events} events in {elapsed:.2f}s = {args.events / elapsed:,.0f} events/s; "
            f"peak RSS {peak / 2**20:.1f} MB; {disk / 2**20:.0f} MB written; "
            f"service CPU user {cpu.user:.1f}s system {cpu.system:.1f}s"
        )
        print(f"machine: {machine(work)}")
    finally:
        if service is not None:
            service.stop()
        redis_proc.kill()
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

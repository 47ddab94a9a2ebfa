"""Drain benchmark: a backlog of the realistic workload is published to a fresh redis-server BEFORE the consumer
starts; then ``python -m tasklogger consume`` is started and timed until the group has read everything and
acknowledged it all (lag 0, pending 0). Reports events/s, the peak RSS of the service and of its child processes
(the writer and the indexer; sampled every 50 ms), its CPU time, and the machine. Afterwards the records on disk
are counted (one per published entry).

    python bench/drain.py --events 100000
    python bench/drain.py --events 20000 --dir /mnt/ssd/tl-bench      # measure on a given disk
    python bench/drain.py --no-index                                   # without the task index, to compare
    python bench/drain.py --events 2000 --large-kb 500                 # a backlog of large entries (memory)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import redis
from common import CpuWindow, RedisProcess, RssSampler, Service, machine
from workload import STREAM, interleaved, publish, summary

GROUP = "task-logger"


def group_state(client: redis.Redis) -> tuple[int, int, int] | None:
    """(entries read, lag, pending) of the service's group, or None before it exists."""
    try:
        for info in client.xinfo_groups(STREAM):
            if info["name"] in (GROUP, GROUP.encode()):
                lag = info.get("lag")
                return int(info.get("entries-read") or 0), -1 if lag is None else int(lag), int(info["pending"])
    except redis.ResponseError:
        pass
    return None


def records_on_disk(logs_dir: Path) -> int:
    """How many JSONL records the logs directory holds (task files, webhook buffers and dead letters)."""
    total = 0
    for path in logs_dir.rglob("*.jsonl"):
        if path.name in ("05-digests.jsonl", "checkpoints.jsonl"):
            continue  # the audit trail's digests and checkpoints, not events
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                total += chunk.count(b"\n")
    return total


def index_caught_up(logs_dir: Path, deadline: float) -> float:
    """perf_counter() when the task index has a row for every task directory with all of its records."""
    import sqlite3

    path = logs_dir / ".tasklogger" / "index.sqlite3"
    tasks = [p for p in logs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    records = sum(records_on_disk(p) for p in tasks)
    while time.perf_counter() < deadline:
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
                query = "SELECT count(*), sum(webhook_flow + agent_output + user_inputs) FROM tasks"
                row = conn.execute(query).fetchone()
            if row == (len(tasks), records):
                return time.perf_counter()
        except sqlite3.Error:
            pass
        time.sleep(0.02)
    raise SystemExit("the index did not catch up in time")


def index_report(logs_dir: Path, deadline: float, started: float, drained: float) -> str:
    """When the index had caught up with the drained directory, relative to the start and to the drain."""
    after = index_caught_up(logs_dir, deadline) - started
    return f"index: all tasks and records indexed {after:.2f} s after the start ({after - drained:+.2f} s vs drained)"


def large_entries(count: int, kb: int) -> list[dict[str, str]]:
    """``count`` task:output entries of ``kb`` KB each over 32 tasks: what bounds a batch in bytes is measured."""
    content = "x" * (kb * 1024)
    return [
        {"type": "task:output", "task_id": f"large-{n % 32}", "data": f'{{"n": {n}, "content": "{content}"}}'}
        for n in range(count)
    ]


def backlog(args: argparse.Namespace) -> list[dict[str, str]]:
    """The entries to publish: the realistic workload, or ``--large-kb`` entries."""
    if args.large_kb:
        return large_entries(args.events, args.large_kb)
    return list(interleaved(args.events, seed=args.seed))


def nproc() -> int:
    """CPUs this process may run on (what ``nproc`` prints)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=None, help="MAX_BATCH_SIZE for the service (default: its own)")
    parser.add_argument("--large-kb", type=int, default=0, help="publish entries of this many KB, not the workload")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir, removed)")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds of draining")
    parser.add_argument(
        "--index", action=argparse.BooleanOptionalAction, default=True, help="keep the task index (TASKLOGGER_INDEX)"
    )
    args = parser.parse_args()

    work = args.dir or Path(tempfile.mkdtemp(prefix="tl-drain-"))
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    if logs.exists():
        raise SystemExit(f"{logs} exists: use an empty --dir")
    redis_proc = RedisProcess(work / "redis", appendonly=False)
    service: Service | None = None
    sampler: RssSampler | None = None
    try:
        redis_proc.start()
        client = redis_proc.client()
        entries = backlog(args)
        print(f"workload: {summary(entries)}")
        started = time.perf_counter()
        publish(client, entries)
        del entries
        print(f"published {args.events} entries in {time.perf_counter() - started:.1f}s (before the consumer starts)")

        env = {"MAX_BATCH_SIZE": str(args.batch)} if args.batch else {}
        env["TASKLOGGER_INDEX"] = str(int(args.index))
        started = time.perf_counter()
        service = Service(logs, redis_proc.url, env=env).start()
        assert service.process is not None
        sampler = RssSampler(service.process.pid, interval=0.05)
        sampler.start()
        redis_pid = redis_proc.process.pid if redis_proc.process is not None else None
        cpu_window = CpuWindow(service.process.pid, redis_pid)
        first_ack: float | None = None
        acked_at_first = 0
        deadline = started + args.timeout
        while True:
            state = group_state(client)
            now = time.perf_counter()
            if state is not None:
                read, lag, pending = state
                if first_ack is None and read - pending > 0:
                    first_ack, acked_at_first = now, read - pending
                    cpu_window.start()
                if lag == 0 and pending == 0:
                    break
            if service.process.poll() is not None:
                raise SystemExit(f"the service exited with {service.process.returncode}; see {service.log}")
            if now > deadline:
                raise SystemExit(f"not drained within {args.timeout:.0f}s; see {service.log}")
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
        cpu_window.stop()
        index_note = index_report(logs, deadline, started, elapsed) if args.index else "index: off (--no-index)"
        sampler.stop()
        cpu = sampler.process.cpu_times()
        service.stop()

        on_disk = records_on_disk(logs)
        size = sum(f.stat().st_size for f in logs.rglob("*") if f.is_file())
        steady = ""
        if first_ack is not None:
            rest = (args.events - acked_at_first) / max(1e-9, elapsed - (first_ack - started))
            steady = f"; {rest:,.0f} events/s from the first acknowledged batch on"
        print(
            f"drain: {args.events} events in {elapsed:.2f} s = {args.events / elapsed:,.0f} events/s "
            f"(from starting the process{steady})"
        )
        print(
            f"service: {sampler.report()}; CPU user {cpu.user:.1f} s, system {cpu.system:.1f} s; "
            f"{size / 2**20:.0f} MB written; {on_disk} records on disk"
            + ("" if on_disk == args.events else f" (EXPECTED {args.events})")
        )
        print(f"busy from the first acknowledged batch to the drain: {cpu_window.report()}")
        print(index_note)
        print(f"machine: nproc={nproc()}, {machine(logs)}")
        if on_disk != args.events:
            sys.exit(1)
    finally:
        if sampler is not None:
            sampler.stop()
        if service is not None:
            service.kill()
        redis_proc.kill()
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

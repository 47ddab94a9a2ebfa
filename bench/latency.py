"""Live latency: the service (``python -m tasklogger consume``, default settings) runs on an empty stream; the
realistic workload is then published at a steady rate (default 1,000 entries/s for 20 s), one XADD per entry,
and for every entry we measure the time from just before its XADD until its record (found by its stream id) is
visible in its file on disk.

A watcher thread polls, every 0.5 ms, the size of each file that should receive an entry not seen yet, reads the
bytes it gained and parses the ids of the new lines (no inotify). The service appends a batch's records, fsyncs
them, then XACKs: "visible" is the moment the write is readable, a few fsyncs before the acknowledgement.

Reported apart, as p50/p90/p99/max:
- task events (task:*, knowledge:*);
- webhook steps (webhook:*, response:*, notification:*), first visible anywhere: in the task's
  02-webhook-flow.jsonl or, while no entry has named the task yet, in the reserved webhook buffer;
- webhook steps in the task's 02-webhook-flow.jsonl: for the steps before webhook:task_created this includes
  waiting for that entry to be published, so it depends on the producers' pace, not only on the service.
With ``--acked``, also the time until the entry is acknowledged (polls XPENDING's summary every millisecond).

    python bench/latency.py                       # 1,000 entries/s for 20 s
    python bench/latency.py --seconds 5 --rate 500 --events 2000
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from common import RedisProcess, RssSampler, Service, machine
from workload import (
    STATE_DIR,
    STREAM,
    WEBHOOK_NAMESPACES,
    Fields,
    buffer_path,
    destination,
    interleaved,
    webhook_tasks,
)

from tasklogger.records import stream_id_key

GROUP = "task-logger"
_LINE_ID = re.compile(rb'^\{"seq":\d+,"id":"([^"\\]+)"')


@dataclass
class Tail:
    """How far one watched file has been read."""

    offset: int = 0
    partial: bytes = b""
    fd: int | None = None


@dataclass
class Expectation:
    entry_id: str
    kind: str  # "task" or "webhook"
    final: str  # the file the entry ends up in
    buffer: str | None  # the webhook buffer it may pass through first


class DiskWatcher(threading.Thread):
    """Polls the files that owe an entry; notes when each (id, file) pair first becomes readable."""

    def __init__(self, logs_dir: Path, interval: float = 0.0005) -> None:
        super().__init__(daemon=True, name="disk-watcher")
        self.logs_dir = logs_dir
        self.interval = interval
        self.incoming: queue.SimpleQueue[Expectation] = queue.SimpleQueue()
        self.halt = threading.Event()
        #: (entry id, relative path) -> perf_counter when first read there.
        self.seen: dict[tuple[str, str], float] = {}
        self.duplicates = 0
        self.rounds = 0
        self._tails: dict[str, Tail] = {}
        self._owed: dict[str, set[str]] = {}  # relative path -> entry ids still expected there
        self._buffer_of: dict[str, str] = {}  # entry id -> the webhook buffer it may pass through

    def expect(self, expectation: Expectation) -> None:
        self.incoming.put(expectation)

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                self._take_expectations()
                for rel in list(self._owed):
                    if rel in self._owed:  # not forgotten by an earlier file of this round (an adopted buffer)
                        self._poll(rel)
                self.rounds += 1
                time.sleep(self.interval)
        finally:
            for tail in self._tails.values():
                if tail.fd is not None:
                    os.close(tail.fd)

    def _take_expectations(self) -> None:
        while True:
            try:
                exp = self.incoming.get_nowait()
            except queue.Empty:
                return
            if (exp.entry_id, exp.final) in self.seen:
                continue
            self._owed.setdefault(exp.final, set()).add(exp.entry_id)
            if exp.buffer is not None and (exp.entry_id, exp.buffer) not in self.seen:
                self._owed.setdefault(exp.buffer, set()).add(exp.entry_id)
                self._buffer_of[exp.entry_id] = exp.buffer

    def _poll(self, rel: str) -> None:
        tail = self._tails.setdefault(rel, Tail())
        if tail.fd is None:
            try:
                tail.fd = os.open(self.logs_dir / rel, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return
        size = os.fstat(tail.fd).st_size
        if size <= tail.offset:
            return
        data = tail.partial + os.pread(tail.fd, size - tail.offset, tail.offset)
        now = time.perf_counter()
        tail.offset = size
        cut = data.rfind(b"\n") + 1
        tail.partial = data[cut:]
        owed = self._owed[rel]
        for line in data[:cut].splitlines():
            match = _LINE_ID.match(line)
            if match is None:
                continue
            key = (match.group(1).decode(), rel)
            if key in self.seen:
                self.duplicates += 1
                continue
            self.seen[key] = now
            owed.discard(key[0])
            buffer = self._buffer_of.pop(key[0], None)
            if buffer is not None and buffer != rel:
                # In its task's flow already: it will not show up in the buffer any more (adopted in one batch).
                others = self._owed.get(buffer)
                if others is not None:
                    others.discard(key[0])
                    if not others:
                        self._forget(buffer)
        if not owed:
            self._forget(rel)

    def _forget(self, rel: str) -> None:
        """Stop polling ``rel`` until it owes an entry again (then it is reopened at the same offset)."""
        self._owed.pop(rel, None)
        tail = self._tails.get(rel)
        if tail is not None and tail.fd is not None:
            os.close(tail.fd)
            tail.fd = None


class AckWatcher(threading.Thread):
    """Optional: when each entry is acknowledged. One consumer acknowledges in stream order, so an entry is
    acknowledged once the group has delivered it and the oldest pending entry is newer (or none is pending)."""

    def __init__(self, client: redis.Redis, interval: float = 0.001) -> None:
        super().__init__(daemon=True, name="ack-watcher")
        self.client = client
        self.interval = interval
        self.halt = threading.Event()
        self.incoming: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.acked: dict[str, float] = {}
        self._waiting: list[tuple[tuple[int, int], str]] = []

    def run(self) -> None:
        while not self.halt.is_set():
            while not self.incoming.empty():
                entry_id = self.incoming.get_nowait()
                self._waiting.append((stream_id_key(entry_id), entry_id))
            if self._waiting:
                summary = self.client.xpending(STREAM, GROUP)
                groups = self.client.xinfo_groups(STREAM)
                now = time.perf_counter()
                delivered = stream_id_key(_text(groups[0]["last-delivered-id"])) if groups else (0, 0)
                oldest = stream_id_key(_text(summary["min"])) if summary["pending"] else None
                keep = []
                for key, entry_id in self._waiting:
                    if key <= delivered and (oldest is None or key < oldest):
                        self.acked[entry_id] = now
                    else:
                        keep.append((key, entry_id))
                self._waiting = keep
            time.sleep(self.interval)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _group_exists(client: redis.Redis) -> bool:
    try:
        return bool(client.xinfo_groups(STREAM))
    except redis.ResponseError:
        return False


def percentiles(values: list[float]) -> str:
    """n, p50, p90, p99 and max of latencies given in seconds, printed in milliseconds."""
    if len(values) < 2:
        return f"n={len(values)} (too few samples)"
    ms = sorted(v * 1000 for v in values)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return f"n={len(ms):>6}  p50 {q[49]:7.2f}  p90 {q[89]:7.2f}  p99 {q[98]:7.2f}  max {ms[-1]:8.2f} ms"


@dataclass
class Sent:
    at: float
    expectation: Expectation


def publish_paced(
    client: redis.Redis, entries: list[Fields], rate: float, disk: DiskWatcher, acks: AckWatcher | None
) -> tuple[dict[str, Sent], float]:
    """XADD one entry at a time at a steady ``rate``; returns what was sent (by id) and how long it took."""
    hooks = webhook_tasks(entries)
    sent: dict[str, Sent] = {}
    interval = 1.0 / rate
    begun = next_at = time.perf_counter()
    for fields in entries:
        webhook = fields["type"].partition(":")[0] in WEBHOOK_NAMESPACES
        while (delay := next_at - time.perf_counter()) > 0:
            time.sleep(min(delay, 0.0005))
        at = time.perf_counter()
        entry_id = _text(client.xadd(STREAM, fields))  # type: ignore[arg-type]
        final = destination(fields, hooks)
        buffered = buffer_path(fields["webhook_event_id"]) if webhook and "task_id" not in fields else None
        if buffered == final:
            buffered = None  # its task is never named in this run: the buffer is where it stays
        exp = Expectation(entry_id, "webhook" if webhook else "task", final, buffered)
        sent[entry_id] = Sent(at, exp)
        disk.expect(exp)
        if acks is not None:
            acks.incoming.put(entry_id)
        next_at += interval
    return sent, time.perf_counter() - begun


def settle(sent: dict[str, Sent], disk: DiskWatcher, acks: AckWatcher | None, timeout: float) -> None:
    """Wait for the last entries (membership tests only: the watcher threads own their dicts)."""
    deadline = time.monotonic() + timeout
    unseen = [(entry_id, item.expectation.final) for entry_id, item in sent.items()]
    while unseen and time.monotonic() < deadline:
        unseen = [key for key in unseen if key not in disk.seen]
        time.sleep(0.05)
    if acks is not None:
        unacked = list(sent)
        while unacked and time.monotonic() < deadline:
            unacked = [entry_id for entry_id in unacked if entry_id not in acks.acked]
            time.sleep(0.05)


def report(sent: dict[str, Sent], disk: DiskWatcher, acks: AckWatcher | None) -> tuple[list[str], int]:
    """The figures as lines, and how many entries never showed up in their file."""
    task: list[float] = []
    first: list[float] = []
    flow: list[float] = []
    acked: list[float] = []
    missing = 0
    for entry_id, item in sent.items():
        exp = item.expectation
        at_final = disk.seen.get((entry_id, exp.final))
        at_buffer = disk.seen.get((entry_id, exp.buffer)) if exp.buffer else None
        if at_final is None:
            missing += 1
            continue
        if exp.kind == "task":
            task.append(at_final - item.at)
        else:
            first.append(min(at_final, at_buffer if at_buffer is not None else at_final) - item.at)
            if not exp.final.startswith(f"{STATE_DIR}/"):
                flow.append(at_final - item.at)
        if acks is not None and entry_id in acks.acked:
            acked.append(acks.acked[entry_id] - item.at)
    lines = [
        f"  task events                      {percentiles(task)}",
        f"  webhook steps, first visible     {percentiles(first)}",
        f"  webhook steps, in the task flow  {percentiles(flow)}",
    ]
    if acks is not None:
        lines.append(f"  all entries, acknowledged        {percentiles(acked)}")
    return lines, missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0, help="entries published per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to publish")
    parser.add_argument("--events", type=int, default=None, help="publish at most this many entries")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--acked", action="store_true", help="also measure XADD-to-acknowledged (adds Redis polls)")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir, removed)")
    parser.add_argument("--settle", type=float, default=30.0, help="how long to wait for the last entries")
    args = parser.parse_args()
    total = int(args.rate * args.seconds)
    if args.events is not None:
        total = min(total, args.events)

    entries = list(interleaved(total, seed=args.seed))
    work = args.dir or Path(tempfile.mkdtemp(prefix="tl-latency-"))
    logs = work / "logs"
    redis_proc = RedisProcess(work / "redis", appendonly=False)
    service: Service | None = None
    disk = DiskWatcher(logs)
    acks: AckWatcher | None = None
    sampler: RssSampler | None = None
    try:
        redis_proc.start()
        client = redis_proc.client()
        service = Service(logs, redis_proc.url).start()
        assert service.process is not None
        deadline = time.monotonic() + 30
        while not _group_exists(client):
            if time.monotonic() > deadline or service.process.poll() is not None:
                raise SystemExit(f"the service did not create its group; see {service.log}")
            time.sleep(0.05)
        time.sleep(1.0)  # let the consumer reach its blocking read
        sampler = RssSampler(service.process.pid, interval=0.05)
        sampler.start()
        disk.start()
        if args.acked:
            acks = AckWatcher(redis_proc.client())
            acks.start()

        sent, published_in = publish_paced(client, entries, args.rate, disk, acks)
        settle(sent, disk, acks, args.settle)
        sampler.stop()
        disk.halt.set()
        disk.join(5)
        if acks is not None:
            acks.halt.set()
            acks.join(5)

        lines, missing = report(sent, disk, acks)
        print(
            f"latency, XADD until visible on disk: {len(sent)} entries at {len(sent) / published_in:,.0f}/s "
            f"over {published_in:.1f} s (target {args.rate:,.0f}/s)"
        )
        print("\n".join(lines))
        print(
            f"  not seen in their file: {missing}; seen twice: {disk.duplicates}; watcher rounds: {disk.rounds:,} "
            f"({disk.rounds / max(1e-9, published_in):,.0f}/s)"
        )
        print(f"  service {sampler.report()}")
        print(f"machine: nproc={len(os.sched_getaffinity(0))}, {machine(logs)}")
        if missing or disk.duplicates:
            raise SystemExit(1)
    finally:
        disk.halt.set()
        if acks is not None:
            acks.halt.set()
        if sampler is not None:
            sampler.stop()
        if service is not None:
            service.stop()
        redis_proc.kill()
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

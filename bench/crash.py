"""Crash tester: publish the realistic workload while SIGKILLing the real service again and again, restart it each
time, let it drain, then check the logs directory against the stream:

- every entry is on disk exactly once (by stream id), in the file WIRE-FORMAT.md puts it in, with the data that
  was published (``lost``, ``duplicated``, ``wrong_file``, ``corrupt``);
- each JSONL file holds whole lines only (``torn``), in stream order (``misordered``), and its hash chain verifies
  from the genesis of its path (``broken_chains``);
- every JSON view parses (``bad_json``) and names the entry that last changed it (``bad_views``);
- nothing was dead-lettered (the workload has no bad entries), nothing is pending in the group, its lag is 0;
- ``tasklogger verify`` exits 0 on the directory: every chain, digest and checkpoint holds (``audit``).

    python bench/crash.py --kills 50 --events 60000      # by hand; exit status 1 if any count is not 0
    (tests/e2e/test_crash.py runs it small)

It starts its own redis-server on a free loopback port and ``python -m tasklogger consume`` as a subprocess,
and stops both whatever happens.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RedisProcess, Service, group_drained
from workload import STATE_DIR, STREAM, Fields, destination, interleaved, publish, webhook_tasks

from tasklogger import records

GROUP = "task-logger"
DEAD_LETTERS = f"{STATE_DIR}/dead-letters.jsonl"


@dataclass
class Report:
    """What the check found. Every count after ``events`` must be 0; ``files`` is for information."""

    kills: int = 0
    events: int = 0
    lost: int = 0
    duplicated: int = 0
    torn: int = 0
    misordered: int = 0
    broken_chains: int = 0
    stuck_pending: int = 0
    wrong_file: int = 0
    corrupt: int = 0
    bad_json: int = 0
    bad_views: int = 0
    dead_letters: int = 0
    lag: int = 0
    audit: int = 0
    files: int = 0
    problems: list[str] = field(default_factory=list)

    FAILURES = ("lost", "duplicated", "torn", "misordered", "broken_chains", "stuck_pending", "wrong_file",
                "corrupt", "bad_json", "bad_views", "dead_letters", "lag", "audit")  # fmt: skip

    @property
    def ok(self) -> bool:
        return not any(getattr(self, name) for name in self.FAILURES)

    def line(self) -> str:
        counts = " ".join(f"{name}={getattr(self, name)}" for name in self.FAILURES)
        return f"kills={self.kills} events={self.events} {counts} files={self.files}"

    def problem(self, kind: str, text: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.problems) < 200:
            self.problems.append(f"{kind}: {text}")


# -- the check --------------------------------------------------------------------------------------------------


def check(
    logs_dir: Path,
    published: list[tuple[str, Fields]],
    client: redis.Redis,
    *,
    stream: str = STREAM,
    group: str = GROUP,
    report: Report | None = None,
) -> Report:
    """Compare the logs directory with what was published (``(entry id, fields)`` in stream order) and the group."""
    report = report or Report()
    report.events = len(published)
    hooks = webhook_tasks(fields for _, fields in published)
    expected = {entry_id: (destination(fields, hooks), fields) for entry_id, fields in published}
    found: dict[str, list[str]] = defaultdict(list)

    for path in sorted(p for p in logs_dir.rglob("*.jsonl") if p.is_file()):
        report.files += 1
        rel = path.relative_to(logs_dir).as_posix()
        if rel.endswith("/05-digests.jsonl") or rel == f"{STATE_DIR}/checkpoints.jsonl":
            continue  # the audit trail's own records: checked by tasklogger verify below
        for entry_id, body in _check_jsonl(rel, path.read_bytes(), report):
            found[entry_id].append(rel)
            if rel == DEAD_LETTERS:
                report.problem("dead_letters", f"{entry_id}: {body.get('reason')} {body.get('detail')}")
                continue
            want = expected.get(entry_id)
            if want is None:
                report.problem("corrupt", f"{rel}: {entry_id} was never published")
            elif want[0] != rel:
                report.problem("wrong_file", f"{entry_id} ({want[1]['type']}) is in {rel}, expected {want[0]}")
            elif not _same_event(body, want[1]):
                report.problem("corrupt", f"{rel}: {entry_id} differs from the published entry")

    for entry_id, (where, fields) in expected.items():
        places = found.get(entry_id, [])
        if not places:
            report.problem("lost", f"{entry_id} ({fields['type']}) not on disk, expected in {where}")
        elif len(places) > 1:
            report.duplicated += len(places) - 1
            if len(report.problems) < 200:
                report.problems.append(f"duplicated: {entry_id} ({fields['type']}) in {places}")

    _check_views(logs_dir, published, report)
    _check_group(client, stream, group, report)
    _check_audit(logs_dir, report)
    return report


def _check_audit(logs_dir: Path, report: Report) -> None:
    """``tasklogger verify`` on the directory, as an auditor would run it: kill -9 and torn-tail repair must
    leave every chain intact and every ended task sealed."""
    verify = [sys.executable, "-m", "tasklogger", "verify", "--logs-dir", str(logs_dir)]
    result = subprocess.run(verify, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        for line in (result.stdout + result.stderr).splitlines()[-20:]:
            report.problem("audit", f"verify exit {result.returncode}: {line}")


def _check_jsonl(rel: str, data: bytes, report: Report) -> list[tuple[str, dict[str, Any]]]:
    """Whole lines, a chain that verifies from the path's genesis, ids in stream order; the records' ids."""
    out: list[tuple[str, dict[str, Any]]] = []
    if data and not data.endswith(b"\n"):
        whole = data.rfind(b"\n") + 1
        report.problem("torn", f"{rel}: partial last line ({len(data) - whole} bytes)")
        data = data[:whole]
    prev, last, chain_ok = records.genesis(rel), (0, 0), True
    for n, line in enumerate(data.splitlines(), start=1):
        try:
            record = records.parse_line(line)
        except records.RecordError as exc:
            report.problem("torn", f"{rel}:{n}: {exc}")
            chain_ok = False
            continue
        if chain_ok and (record.seq != n or record.hash != records.link(prev, record.canonical)):
            report.problem("broken_chains", f"{rel}:{n}: seq {record.seq}, hash does not link")
            chain_ok = False  # one broken link per file; its ids are still counted
        prev = record.hash
        key = records.stream_id_key(record.entry_id)
        if key <= last:
            report.problem("misordered", f"{rel}:{n}: {record.entry_id} after a later or equal id")
        last = max(last, key)
        out.append((record.entry_id, record.body))
    return out


def _same_event(body: dict[str, Any], fields: Fields) -> bool:
    if body.get("type") != fields["type"] or body.get("ts") != fields.get("timestamp"):
        return False
    for name in ("task_id", "webhook_event_id"):
        if name in fields and body.get(name) != fields[name]:
            return False
    return bool(body.get("data") == json.loads(fields["data"]))


def _check_views(logs_dir: Path, published: list[tuple[str, Fields]], report: Report) -> None:
    """Every JSON file parses; each task's metadata, input and final result name the entries that made them."""
    for path in logs_dir.rglob("*.json"):
        try:
            orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            report.problem("bad_json", f"{path.relative_to(logs_dir)}: {exc}")
    # (task, file) -> {where in the document: the stream id that must be there}
    wanted: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for entry_id, fields in published:
        kind, task = fields["type"], fields.get("task_id", "")
        if kind == "task:created":
            wanted[(task, "metadata.json")]["stream_id"] = entry_id
            wanted[(task, "01-input.json")]["stream_ids.task:created"] = entry_id
        elif kind == "task:context_built":
            wanted[(task, "01-input.json")]["stream_ids.task:context_built"] = entry_id
        elif kind in ("task:completed", "task:failed"):
            wanted[(task, "04-final-result.json")]["stream_id"] = entry_id
    for (task, name), ids in wanted.items():
        try:
            doc = orjson.loads((logs_dir / task / name).read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            report.problem("bad_views", f"{task}/{name}: {exc}")
            continue
        for where, entry_id in ids.items():
            value: Any = doc
            for part in where.split(".", 1):
                value = value.get(part) if isinstance(value, dict) else None
            if value != entry_id:
                report.problem("bad_views", f"{task}/{name}: {where} is {value!r}, expected {entry_id}")


def _check_group(client: redis.Redis, stream: str, group: str, report: Report) -> None:
    report.stuck_pending = int(client.xpending(stream, group)["pending"])
    for info in client.xinfo_groups(stream):
        if _text(info["name"]) == group:
            lag = info.get("lag")
            # Redis reports no lag when it cannot tell; then compare what was read with what was added.
            if lag is None:
                lag = int(client.xinfo_stream(stream)["entries-added"]) - int(info.get("entries-read") or 0)
            report.lag = int(lag)
            return
    report.problem("lag", f"no group {group!r} on {stream!r}")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# -- the run ----------------------------------------------------------------------------------------------------


def _progress(client: redis.Redis) -> int:
    """Entries the group has read and acknowledged so far (-1 before the group exists)."""
    try:
        for info in client.xinfo_groups(STREAM):
            return int(info.get("entries-read") or 0) - int(info["pending"])
    except redis.ResponseError:
        pass
    return -1


def _wait(predicate: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class Producer(threading.Thread):
    """Publishes the entries at ``rate`` entries/s in small pipelined chunks, noting (id, fields) in order."""

    def __init__(self, client: redis.Redis, entries: list[Fields], rate: float) -> None:
        super().__init__(daemon=True, name="producer")
        self.client = client
        self.entries = entries
        self.rate = rate
        self.published: list[tuple[str, Fields]] = []
        self.error: BaseException | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            chunk = max(1, int(self.rate / 50))  # 50 rounds a second
            started = time.monotonic()
            for start in range(0, len(self.entries), chunk):
                if self.halt.is_set():
                    return
                part = self.entries[start : start + chunk]
                self.published.extend(zip(publish(self.client, part), part, strict=True))
                ahead = started + (start + len(part)) / self.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        except BaseException as exc:  # reported by run()
            self.error = exc


def run(
    work: Path,
    *,
    kills: int,
    events: int,
    seed: int = 7,
    rate: float = 2_000.0,
    max_gap: float = 0.4,
    batch: int = 300,
    timeout: float = 900.0,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Publish ``events`` entries at ``rate``/s while SIGKILLing the service ``kills`` times; return the check.

    Each kill waits until the current incarnation has acknowledged something (so every incarnation makes
    progress), then a random 0–``max_gap`` s; one kill in four instead comes 0–0.3 s after the start, so
    recovery itself (resuming pending entries, cutting torn tails, adopting buffers) is interrupted too.
    Raises RuntimeError if the whole run takes longer than ``timeout`` seconds.
    """
    rnd = random.Random(seed)
    deadline = time.monotonic() + timeout
    entries = list(interleaved(events, seed=seed))
    redis_proc = RedisProcess(work / "redis").start()
    client = redis_proc.client()
    logs_dir = work / "logs"
    env = {"TASKLOGGER_BLOCK_MS": "50", "MAX_BATCH_SIZE": str(batch), "LOG_LEVEL": "WARNING"}
    producer = Producer(redis_proc.client(), entries, rate)
    service = Service(logs_dir, redis_proc.url, env=env)
    report = Report()
    try:
        service.start()
        service_started = time.monotonic()
        producer.start()
        for n in range(kills):
            if rnd.random() < 0.25:
                time.sleep(rnd.uniform(0, 0.3))
            else:
                before = _progress(client)

                def moved(before: int = before) -> bool:
                    return _progress(client) > before or group_drained(client)

                if not _wait(moved, deadline - time.monotonic()):
                    raise RuntimeError(f"no progress before kill {n + 1}; see {service.log}")
                time.sleep(rnd.uniform(0, max_gap))
            service.kill()
            report.kills += 1
            if log is not None and (n + 1) % 10 == 0:
                log(f"{n + 1} kills, {len(producer.published)} published, {max(0, _progress(client))} acknowledged")
            service = Service(logs_dir, redis_proc.url, env=env).start()
            service_started = time.monotonic()
        producer.join(max(0.0, deadline - time.monotonic()))
        if producer.error is not None:
            raise RuntimeError(f"publishing failed: {producer.error!r}")
        if producer.is_alive():
            raise RuntimeError("the producer did not finish in time")
        if not _wait(lambda: group_drained(client), max(0.0, deadline - time.monotonic()), interval=0.05):
            raise RuntimeError(f"the service did not drain in time; see {service.log}")
        # SIGTERM only once the last incarnation has had time to install its handler (it may have just started).
        time.sleep(max(0.0, service_started + 2.0 - time.monotonic()))
        code = service.stop()
        if code != 0:
            report.problems.append(f"note: the last incarnation exited with {code} on SIGTERM")
        return check(logs_dir, producer.published, client, report=report)
    finally:
        producer.halt.set()
        service.kill()
        producer.join(5)
        client.close()
        producer.client.close()
        redis_proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--rate", type=float, default=2_000.0, help="entries published per second")
    parser.add_argument("--max-gap", type=float, default=0.4, help="longest wait before a kill, seconds")
    parser.add_argument("--batch", type=int, default=300, help="MAX_BATCH_SIZE of the service")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds")
    parser.add_argument("--keep", action="store_true", help="keep the work directory even if all is well")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tl-crash-"))
    started = time.monotonic()
    ok = False
    try:
        report = run(
            work, kills=args.kills, events=args.events, seed=args.seed, rate=args.rate, max_gap=args.max_gap,
            batch=args.batch, timeout=args.timeout, log=lambda text: print(text, file=sys.stderr, flush=True),
        )  # fmt: skip
        ok = report.ok
    except RuntimeError as exc:
        print(f"crash test aborted: {exc}", file=sys.stderr)
        sys.exit(2)
    finally:
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work} (logs/, service.log, redis/)", file=sys.stderr)
    print(report.line())
    for problem in report.problems[:30]:
        print("  " + problem)
    print(f"  ({time.monotonic() - started:.1f}s)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

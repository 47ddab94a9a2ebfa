"""Crash test: publish a realistic workload while SIGKILLing the real service again and again, then check that
every event is on disk exactly once, in stream order, every chain intact, every file parseable, nothing pending.

    python bench/crash.py --kills 50 --events 60000      # by hand
    (tests/e2e/test_crash.py runs it small in CI)
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RedisProcess, Service, drained, wait
from workload import interleaved, publish

from tasklogger import records


@dataclass
class Report:
    """What the check found; every count but ``kills``, ``events`` and ``files`` must be 0."""

    kills: int = 0
    events: int = 0
    files: int = 0
    lost: int = 0
    duplicated: int = 0
    torn: int = 0
    misordered: int = 0
    broken_chains: int = 0
    bad_json: int = 0
    dead_letters: int = 0
    stuck_pending: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any((self.lost, self.duplicated, self.torn, self.misordered, self.broken_chains,
                        self.bad_json, self.dead_letters, self.stuck_pending))  # fmt: skip

    def line(self) -> str:
        return (
            f"kills={self.kills} events={self.events} files={self.files} lost={self.lost} "
            f"duplicated={self.duplicated} torn={self.torn} misordered={self.misordered} "
            f"broken_chains={self.broken_chains} bad_json={self.bad_json} dead_letters={self.dead_letters} "
            f"stuck_pending={self.stuck_pending}"
        )


def check(logs_dir: Path, published: list[str], client: redis.Redis, report: Report) -> Report:
    """Compare the logs directory with the stream: exactly once, in order, chained, parseable, nothing pending."""
    seen: Counter[str] = Counter()
    for path in sorted(p for p in logs_dir.rglob("*.jsonl") if p.is_file()):
        report.files += 1
        rel = path.relative_to(logs_dir).as_posix()
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            report.torn += 1
            report.problems.append(f"{rel}: partial last line")
        prev, last_key = records.genesis(rel), (0, 0)
        for n, line in enumerate(data.splitlines(), start=1):
            try:
                record = records.parse_line(line)
            except records.RecordError as exc:
                report.torn += 1
                report.problems.append(f"{rel}:{n}: {exc}")
                break
            if record.seq != n or record.hash != records.link(prev, record.canonical):
                report.broken_chains += 1
                report.problems.append(f"{rel}:{n}: chain broken")
                break
            prev = record.hash
            key = records.stream_id_key(record.entry_id)
            if key <= last_key:
                report.misordered += 1
                report.problems.append(f"{rel}:{n}: {record.entry_id} after a later id")
            last_key = key
            if rel.endswith("dead-letters.jsonl"):
                report.dead_letters += 1
            seen[record.entry_id] += 1
    for path in logs_dir.rglob("*.json"):
        try:
            orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError:
            report.bad_json += 1
            report.problems.append(f"{path.relative_to(logs_dir)}: not JSON")
    report.lost = sum(1 for entry_id in published if seen[entry_id] == 0)
    report.duplicated = sum(n - 1 for n in seen.values() if n > 1)
    report.events = len(published)
    info = client.xpending("task_events", "task-logger")
    report.stuck_pending = int(info["pending"])
    return report


def _acked(client: redis.Redis) -> int:
    """Entries the group has read and acknowledged so far."""
    try:
        for info in client.xinfo_groups("task_events"):
            return int(info.get("entries-read") or 0) - int(info["pending"])
    except redis.ResponseError:
        pass
    return 0


def run(work: Path, *, kills: int, events: int, seed: int = 7, max_gap: float = 0.4) -> Report:
    """Publish ``events`` entries while killing the service ``kills`` times; return the check's report."""
    rnd = random.Random(seed)
    redis_proc = RedisProcess(work / "redis").start()
    client = redis_proc.client()
    logs_dir = work / "logs"
    env = {"TASKLOGGER_BLOCK_MS": "50", "MAX_BATCH_SIZE": "300"}
    published: list[str] = []
    done = threading.Event()

    def producer() -> None:
        entries = list(interleaved(events, seed=seed))
        for start in range(0, len(entries), 250):
            published.extend(publish(client, entries[start : start + 250]))
            time.sleep(rnd.uniform(0, 0.02))
        done.set()

    service = Service(logs_dir, redis_proc.url, env=env).start()
    report = Report()
    publisher = threading.Thread(target=producer, daemon=True)
    publisher.start()
    try:
        for _ in range(kills):
            # Kill only once this incarnation is consuming, at a random moment of its work.
            before = _acked(client)
            wait(lambda before=before: _acked(client) > before or done.is_set(), 30, interval=0.01)
            time.sleep(rnd.uniform(0, max_gap))
            service.kill()
            report.kills += 1
            service = Service(logs_dir, redis_proc.url, env=env).start()
        if not done.wait(300):
            raise RuntimeError("the producer did not finish")
        if not wait(lambda: drained(client), 300):
            raise RuntimeError(f"the service did not drain; see {service.log}")
        service.stop()
        return check(logs_dir, published, client, report)
    finally:
        service.kill()
        client.close()
        redis_proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the work directory for inspection")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tl-crash-"))
    try:
        report = run(work, kills=args.kills, events=args.events, seed=args.seed)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(report.line())
    for problem in report.problems[:20]:
        print("  " + problem)
    if args.keep:
        print(f"work directory: {work}")
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()

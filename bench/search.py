"""Search benchmark: ``GET /tasks?q=`` over a large index, through a real ``tasklogger api`` process.

The index is filled directly with generated rows (``index.store_row``, the same SQL the indexer runs), not from
task directories: 100,000 tasks with a message of ~20 words and ~300 words of agent output each, drawn from a
Zipf-distributed vocabulary of 20,000 words, so queries hit common, middling and rare terms as real text does.
Then the API (``tasklogger api``, with its own indexer off so that it only reads) answers a fixed mix of queries:
one word of each frequency band, two words, a prefix, and search combined with filters and sorts. Latency is
measured per request over one keep-alive connection; p50/p95/p99 are printed per kind and overall.

    python bench/search.py --tasks 100000
"""

from __future__ import annotations

import argparse
import http.client
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

from common import ROOT, Service, machine, wait

from tasklogger import index
from tasklogger.summary import TaskRow

SOURCES = ("github", "jira", "slack", "sentry", "dashboard")
AGENTS = ("coder", "planner", "reviewer", "triager")


def vocabulary(size: int, rng: random.Random) -> list[str]:
    """Pronounceable made-up words (no accidental overlap with query syntax)."""
    consonants, vowels = "bcdfghjklmnprstvz", "aeiou"
    words: set[str] = set()
    while len(words) < size:
        n = rng.randint(2, 4)
        words.add("".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(n)))
    return sorted(words)


def fill(path: Path, tasks: int, seed: int) -> list[str]:
    """Create an index of ``tasks`` generated rows; returns the vocabulary by rank (most frequent first)."""
    rng = random.Random(seed)
    words = vocabulary(20_000, rng)
    weights = [1 / (rank + 1) for rank in range(len(words))]
    conn, _ = index.open_writer(path)
    start = time.mktime((2026, 1, 1, 0, 0, 0, 0, 0, 0))
    conn.execute("BEGIN")
    for n in range(tasks):
        text = rng.choices(words, weights, k=320)
        finished = n % 10 != 0
        row = TaskRow(
            task_id=f"task-{n:07d}",
            source=SOURCES[n % len(SOURCES)],
            agent_type=AGENTS[n % len(AGENTS)],
            user_id=f"user-{n % 500}",
            status=("failed" if n % 13 == 0 else "completed") if finished else "running",
            created_ts=start + n * 30,
            updated_ts=start + n * 30 + 120,
            finished_ts=start + n * 30 + 120 if finished else None,
            duration_seconds=120.0 if finished else None,
            cost_usd=round(rng.uniform(0.01, 5), 4),
            input_tokens=rng.randint(100, 100_000),
            output_tokens=rng.randint(10, 20_000),
            message=" ".join(text[:20]),
            agent_output=rng.randint(5, 200),
            first_entry_id=f"{int(start * 1000) + n * 30_000}-0",
            last_entry_id=f"{int(start * 1000) + n * 30_000 + 120_000}-0",
        )
        index.store_row(conn, row, None, 0, [" ".join(text)])
        if n % 5000 == 4999:
            conn.execute("COMMIT")
            conn.execute("BEGIN")
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return words


def queries(words: list[str], rng: random.Random) -> list[tuple[str, dict[str, object]]]:
    """(kind, query parameters) of the measured mix."""
    mix: list[tuple[str, dict[str, object]]] = []
    for _ in range(100):
        common, middle, rare = (
            words[rng.randrange(10)],
            words[rng.randrange(100, 1000)],
            words[rng.randrange(10_000, 20_000)],
        )
        mix += [
            ("common word", {"q": common}),
            ("middling word", {"q": middle}),
            ("rare word", {"q": rare}),
            ("two words", {"q": f"{middle} {words[rng.randrange(50, 500)]}"}),
            ("prefix", {"q": middle[:3] + "*"}),
            ("word + filters", {"q": middle, "source": rng.choice(SOURCES), "status": "completed"}),
            ("word, by cost", {"q": common, "sort": "-cost_usd"}),
            ("word, 2nd page", {"q": middle, "limit": 20, "page": 2}),
            ("no q, filters", {"user": f"user-{rng.randrange(500)}", "status": "failed"}),
        ]
    rng.shuffle(mix)
    return mix


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def get(conn: http.client.HTTPConnection, params: dict[str, object]) -> tuple[float, dict[str, object]]:
    started = time.perf_counter()
    conn.request("GET", "/tasks?" + urlencode(params))
    response = conn.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise SystemExit(f"{params}: HTTP {response.status} {body[:200]!r}")
    import json

    return elapsed, json.loads(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--dir", type=Path, default=None, help="work directory, kept and reused (default: a temp dir, removed)"
    )
    args = parser.parse_args()

    work = args.dir or Path(tempfile.mkdtemp(prefix="tl-search-"))
    logs = work / "logs"
    (logs / ".tasklogger").mkdir(parents=True, exist_ok=True)
    path = logs / ".tasklogger" / "index.sqlite3"
    service: Service | None = None
    try:
        started = time.perf_counter()
        if path.exists():  # an index a previous run with the same --dir and --seed filled
            words = vocabulary(20_000, random.Random(args.seed))
            print(f"index: reusing {path}")
        else:
            words = fill(path, args.tasks, args.seed)
            took = time.perf_counter() - started
            print(f"index: {args.tasks:,} generated tasks filled in {took:.1f} s")
        size = sum(p.stat().st_size for p in path.parent.glob("index.sqlite3*"))
        print(f"index file: {size / 2**20:.0f} MB")

        env = {"TASKLOGGER_INDEX": "0"}  # this process only reads the index (no task directories to scan)
        service = Service(logs, "redis://127.0.0.1:1/0", command="api", env=env).start()
        port = int(service.env["PORT"])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

        def up() -> bool:
            try:
                get(conn, {"limit": 1})
                return True
            except (OSError, http.client.HTTPException):
                conn.close()
                return False

        if not wait(up, 30):
            raise SystemExit(f"the API did not answer; see {service.log}")
        rng = random.Random(args.seed + 1)
        mix = queries(words, rng)
        for _, params in mix[:50]:  # warm the page cache and the connection's statement cache
            get(conn, {k: v for k, v in params.items() if k != "page"})
        by_kind: dict[str, list[float]] = {}
        matched: dict[str, list[int]] = {}
        for kind, params in mix:
            if "page" in params:
                params = {k: v for k, v in params.items() if k != "page"}
                _, first = get(conn, params)
                if first["next_cursor"]:
                    params["cursor"] = first["next_cursor"]
            elapsed, body = get(conn, params)
            by_kind.setdefault(kind, []).append(elapsed * 1000)
            matched.setdefault(kind, []).append(len(body["tasks"]))  # type: ignore[arg-type]
        every = [v for values in by_kind.values() for v in values]
        print(f"{'query':<16} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}  rows/page")
        for kind, values in by_kind.items():
            print(
                f"{kind:<16} {len(values):>4} {statistics.median(values):>8.2f} {percentile(values, 95):>8.2f} "
                f"{percentile(values, 99):>8.2f} {max(values):>8.2f}  {statistics.mean(matched[kind]):.0f}"
            )
        print(
            f"{'all':<16} {len(every):>4} {statistics.median(every):>8.2f} {percentile(every, 95):>8.2f} "
            f"{percentile(every, 99):>8.2f} {max(every):>8.2f}"
        )
        print(f"machine: {machine(logs)}; client and server on the same 2 cores; root {ROOT}")
    finally:
        if service is not None:
            service.kill()
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

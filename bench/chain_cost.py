"""Micro-benchmark: what the audit trail costs per record and per sealed task, on the realistic workload.

- chaining: ``records.encode`` (serialise + SHA-256 over the previous hash and the canonical bytes + hash member)
  against the plain ``orjson.dumps(body) + b"\\n"`` a store without a chain would write, over the record bodies the
  projector makes from the workload's entries;
- sealing: computing one ended task's digest from its directory (read and SHA-256 every file, parse each chain
  head) and, with a key, signing it (Ed25519); verifying it back (``tasklogger verify`` per task).

    python bench/chain_cost.py --events 50000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workload import interleaved

from tasklogger import records
from tasklogger.audit.digests import digest_body, task_files
from tasklogger.audit.signing import Signer
from tasklogger.audit.verify import verify_logs_dir
from tasklogger.projector import Append, View, project
from tasklogger.wire import decode


def bodies(events: int) -> list[dict[str, Any]]:
    """The record bodies (with ``seq``) the store would append for the workload's entries."""
    out = []
    for n, fields in enumerate(interleaved(events, seed=3)):
        raw = {k.encode(): v.encode() for k, v in fields.items()}
        event = decode(f"{1_700_000_000_000 + n}-0", raw, max_entry_bytes=1 << 30)
        primary = next(op for op in project(event, View()) if isinstance(op, Append))
        out.append({"seq": n + 1, **primary.body})
    return out


def best_of(runs: int, fn: Callable[[], object]) -> float:
    """The fastest of ``runs`` timings of ``fn`` (seconds): the least disturbed by the rest of the machine."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def chain_cost(items: list[dict[str, Any]], runs: int) -> None:
    def plain() -> None:
        for body in items:
            orjson.dumps(body) + b"\n"

    def chained() -> None:
        prev = records.genesis("t/03-agent-output.jsonl")
        for body in items:
            _, prev = records.encode(body, prev)

    n = len(items)
    size = sum(len(orjson.dumps(b)) for b in items) / n
    t_plain, t_chain = best_of(runs, plain) / n, best_of(runs, chained) / n
    print(f"records: {n:,}, mean {size:,.0f} bytes")
    print(f"  orjson.dumps + newline     {t_plain * 1e6:6.2f} µs/record")
    print(f"  records.encode (chained)   {t_chain * 1e6:6.2f} µs/record")
    print(f"  cost of chaining           {(t_chain - t_plain) * 1e6:6.2f} µs/record (+{t_chain / t_plain - 1:.0%})")


def seal_cost(items: list[dict[str, Any]], tasks: int, runs: int) -> None:
    """Write ``tasks`` task directories of the workload's size, then time digesting, signing and verifying them."""
    per_task = max(1, len(items) // tasks)
    signer = Signer(Ed25519PrivateKey.generate())
    with tempfile.TemporaryDirectory(prefix="tl-chain-cost-") as tmp:
        root = Path(tmp)
        for t in range(tasks):
            task = root / f"t-{t}"
            task.mkdir()
            prev, lines = records.genesis(f"t-{t}/03-agent-output.jsonl"), []
            for seq, body in enumerate(items[t * per_task : (t + 1) * per_task], start=1):
                line, prev = records.encode({**body, "seq": seq}, prev)
                lines.append(line)
            (task / "03-agent-output.jsonl").write_bytes(b"".join(lines))
            for name in ("metadata.json", "01-input.json", "04-final-result.json"):
                (task / name).write_bytes(orjson.dumps({"task_id": f"t-{t}", "data": items[t]}) + b"\n")
        fds = [os.open(root / f"t-{t}", os.O_RDONLY | os.O_DIRECTORY) for t in range(tasks)]
        try:

            def digest(sign: bool) -> None:
                for t, fd in enumerate(fds):
                    files, ids = task_files(fd)
                    body = {"seq": 1, **digest_body(f"t-{t}", files, ids, None)}
                    records.encode(signer.sign_body(body) if sign else body, records.genesis("x"))

            t_digest = best_of(runs, lambda: digest(False)) / tasks
            t_signed = best_of(runs, lambda: digest(True)) / tasks
        finally:
            for fd in fds:
                os.close(fd)
        t_verify = best_of(1, lambda: verify_logs_dir(root)) / tasks
    print(f"sealing: {tasks} tasks of {per_task} records (files in the page cache)")
    print(f"  digest of one task          {t_digest * 1e6:7.1f} µs  (+ Ed25519 signature: {t_signed * 1e6:.1f} µs)")
    print(f"  verify one task (offline)   {t_verify * 1e6:7.1f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5, help="repetitions; the fastest is reported")
    parser.add_argument("--tasks", type=int, default=500, help="task directories for the sealing figures")
    args = parser.parse_args()
    items = bodies(args.events)
    chain_cost(items, args.runs)
    seal_cost(items, args.tasks, args.runs)


if __name__ == "__main__":
    main()

"""The indexer in its own process, so that reading task files for the index never holds the consumer's GIL.

``IndexerProcess`` (in the service) has the interface of ``Indexer``: ``submit`` only adds task ids to a set; a
feeder thread writes them, one id per line, to the child's stdin every PASS_INTERVAL_S. While the consumer is
behind (its batches come full), the feeder holds the ids back, for at most HOLD_S: on two cores the indexer's
reading and SQLite's writes would take a fifth of the drain's speed, and the index is derived data that catches
up in one large pass (which also costs less than many small ones). The child
(``python -m tasklogger.index_worker``) runs an ``Indexer`` and reports its figures as one JSON line on stdout
every half second. Task ids are validated names (no control characters), so a newline always ends one. The
child ends when its stdin closes (the service stops or dies); if it dies, the next feed starts a new one, which
scans every task directory first, so nothing is missed.
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import orjson
import structlog

from . import gcpolicy, index
from .indexer import PASS_INTERVAL_S, Indexer, IndexerStats
from .logs import configure
from .store import CommitResult

log = structlog.get_logger(__name__)

#: How often the child reports its figures.
REPORT_S = 0.5
#: While the consumer drains a backlog, task ids wait at most this long before the indexer gets them: the
#: index's staleness under a sustained backlog.
HOLD_S = 30.0
#: ... and at most this many tasks (a bound on the memory the held ids take).
HOLD_TASKS = 50_000


class IndexerProcess:
    """Feeds task ids to the indexer child process and mirrors its figures (for /metrics).

    :param hold_s: how long task ids may be held back while the consumer reports a backlog (HOLD_S).
    """

    def __init__(
        self,
        logs_dir: Path,
        path: Path,
        *,
        rescan_interval_s: float | None = None,
        log_level: str = "INFO",
        log_format: str = "console",
        hold_s: float = HOLD_S,
    ) -> None:
        self.logs_dir = logs_dir
        self.hold_s = hold_s
        self.path = path
        self.rescan_interval_s = rescan_interval_s
        self.log_args = ["--log-level", log_level, "--log-format", log_format]
        self.stats = IndexerStats()
        self.ready = threading.Event()
        self._pending: set[str] = set()
        self._pending_since: float | None = None
        self._backlog = False
        self._child_pending = 0
        self._child_lag: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._child: subprocess.Popen[bytes] | None = None
        self._feeder: threading.Thread | None = None
        self._reports: threading.Thread | None = None

    def submit(self, result: CommitResult) -> None:
        """The consumer's on_commit hook: O(tasks), no I/O, never blocks on the child."""
        with self._lock:
            self._backlog = result.backlog
            if result.tasks:
                if not self._pending:
                    self._pending_since = time.monotonic()
                self._pending.update(result.tasks)

    def lag(self) -> tuple[int, float | None]:
        """(tasks waiting to be indexed, seconds the oldest has waited), here and in the child."""
        with self._lock:
            count = len(self._pending) + self._child_pending
            waited = None if self._pending_since is None else time.monotonic() - self._pending_since
        ages = [age for age in (waited, self._child_lag) if age is not None]
        return count, (round(max(ages), 3) if ages and count else None)

    def start(self) -> IndexerProcess:
        """Start the child and the feeder thread."""
        # Opened here first, so that the API finds a usable (perhaps still filling) index from its first request;
        # a corrupt one is moved aside now, before anything reads it.
        try:
            conn, _ = index.open_writer(self.path)
            conn.close()
        except (OSError, sqlite3.Error) as exc:
            log.error("task index cannot be opened; the indexer process keeps trying", error=str(exc))
        self._spawn()
        self._feeder = threading.Thread(target=self._feed, name="index-feeder", daemon=True)
        self._feeder.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Hand over what is pending, close the child's stdin and wait for it to finish."""
        self._stop.set()
        if self._feeder is not None:
            self._feeder.join(timeout)
        child = self._child
        if child is None:
            return
        if child.stdin is not None:
            try:
                child.stdin.close()
            except OSError:
                pass
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)
        if self._reports is not None:
            self._reports.join(timeout)

    # -- internals ------------------------------------------------------------------------------------------

    def _spawn(self) -> None:
        args = [sys.executable, "-m", "tasklogger.index_worker", str(self.logs_dir), str(self.path), *self.log_args]
        if self.rescan_interval_s is not None:
            args += ["--rescan", str(self.rescan_interval_s)]
        # stderr is the service's: the child's log lines appear with the others.
        child = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._child = child
        assert child.stdout is not None
        self._reports = threading.Thread(
            target=self._read_reports, args=(child.stdout,), name="index-reports", daemon=True
        )
        self._reports.start()

    def _holding(self) -> bool:
        """Whether the pending ids wait for the consumer's backlog to end (call with the lock held)."""
        if not self._backlog or self._pending_since is None:
            return False
        return time.monotonic() - self._pending_since < self.hold_s and len(self._pending) < HOLD_TASKS

    def _feed(self) -> None:
        while True:
            stopping = self._stop.wait(PASS_INTERVAL_S)
            with self._lock:
                if not stopping and self._holding():
                    continue
                batch, self._pending = self._pending, set()
                self._pending_since = None
                self._child_pending += len(batch)
            if batch:
                self._send(batch)
            if stopping:
                return

    def _send(self, batch: set[str]) -> None:
        child = self._child
        try:
            if child is None or child.poll() is not None:
                raise BrokenPipeError("indexer process not running")
            assert child.stdin is not None
            child.stdin.write("".join(f"{task_id}\n" for task_id in batch).encode())
            child.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            self.stats.errors += 1
            self.stats.last_error = f"indexer process: {exc}"
            log.error("indexer process ended, starting a new one (it rescans every task)", error=str(exc))
            self._spawn()

    def _read_reports(self, stdout: IO[bytes]) -> None:
        with stdout:  # closed at the child's end of output
            self._mirror(stdout)

    def _mirror(self, stdout: IO[bytes]) -> None:
        for line in stdout:
            try:
                report = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            with self._lock:
                self._child_pending = int(report["pending"])
                self._child_lag = report["lag_seconds"]
            for name in ("tasks_indexed", "records_indexed", "scans", "errors"):
                setattr(self.stats, name, int(report[name]))
            self.stats.last_error = report["last_error"]
            if report["ready"]:
                self.ready.set()


def _child_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasklogger.index_worker")
    parser.add_argument("logs_dir", type=Path)
    parser.add_argument("index", type=Path)
    parser.add_argument("--rescan", type=float, default=None)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", default="console")
    args = parser.parse_args(argv)
    configure(args.log_level, args.log_format)
    gcpolicy.tune()
    indexer = Indexer(args.logs_dir, args.index, rescan_interval_s=args.rescan).start()
    done = threading.Event()

    def read_ids() -> None:
        for line in sys.stdin.buffer:
            task_id = line.rstrip(b"\n").decode("utf-8", "replace")
            if task_id:
                indexer.touch([task_id])
        done.set()

    threading.Thread(target=read_ids, name="ids", daemon=True).start()
    out = sys.stdout.buffer
    while not done.wait(REPORT_S):
        pending, lag = indexer.lag()
        s = indexer.stats
        report = {
            "pending": pending, "lag_seconds": lag, "tasks_indexed": s.tasks_indexed,
            "records_indexed": s.records_indexed, "scans": s.scans, "errors": s.errors,
            "last_error": s.last_error, "ready": indexer.ready.is_set(),
        }  # fmt: skip
        try:
            out.write(orjson.dumps(report) + b"\n")
            out.flush()
        except BrokenPipeError:
            break
    indexer.stop()


if __name__ == "__main__":
    _child_main()

"""Keeps the task index up to date, off the consumer's hot path.

The consumer calls ``Indexer.submit`` after each durable, acknowledged batch; that only adds the batch's task ids
to a set. A background thread takes the whole set (however many batches touched a task, it is read once), reads
what those tasks' files gained since last time (``summary.scan`` keeps per-file byte offsets) and writes the rows
in one transaction. At start, and whenever the index file was replaced or found corrupt, it scans every task
directory, which is cheap for tasks already up to date (one stat per file).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from . import index
from .config import Settings
from .errors import ConfigError, UnsafeTaskId
from .store import CommitResult
from .wire import check_name

log = structlog.get_logger(__name__)

#: Tasks written per index transaction: short transactions keep readers' view fresh and the WAL small.
TASKS_PER_TRANSACTION = 500
#: Back-off after the index could not be written (disk full, I/O error).
RETRY_S = 2.0
#: At most one indexing pass this often: a task written by many batches meanwhile is read once, and the index's
#: own writes (which the store's syncfs also flushes) stay few. This is the index's lag behind the files.
PASS_INTERVAL_S = 0.5
#: The indexer thread's nice value: the consumer's threads get the CPU first.
NICE = 10


def task_dirs(logs_dir: Path) -> Iterator[str]:
    """Every name under the logs directory that is a valid task id and a real directory (symlinks skipped)."""
    with os.scandir(logs_dir) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                yield check_name(entry.name)
            except UnsafeTaskId:
                continue


@dataclass
class IndexerStats:
    """What /metrics reports about the index."""

    pending: int = 0
    oldest_pending_s: float | None = None
    tasks_indexed: int = 0
    records_indexed: int = 0
    scans: int = 0
    errors: int = 0
    last_error: str | None = None


class Indexer:
    """The background thread that applies committed batches to the index.

    :param rescan_interval_s: also scan every task directory this often (None: only at start). The API-only
        process uses it to follow a consumer running elsewhere; the wait grows with the time a scan takes, so
        scanning never costs more than a tenth of a core.
    """

    def __init__(self, logs_dir: Path, path: Path, *, rescan_interval_s: float | None = None) -> None:
        self.logs_dir = logs_dir
        self.path = path
        self.rescan_interval_s = rescan_interval_s
        self._pending: set[str] = set()
        self._pending_since: float | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._full_scan = True
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._inode: int | None = None
        self.stats = IndexerStats()
        #: Set after the first complete scan: the index then reflects every task on disk.
        self.ready = threading.Event()

    # -- called by the consumer ------------------------------------------------------------------------------

    def submit(self, result: CommitResult) -> None:
        """Note the tasks a committed batch touched (O(tasks), no I/O): the on_commit hook."""
        if result.tasks:
            self.touch(result.tasks)

    def touch(self, task_ids: set[str] | list[str]) -> None:
        """Ask for these tasks to be (re)read."""
        with self._lock:
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.update(task_ids)
        self._wake.set()

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> Indexer:
        """Start the thread (a daemon: the index is derived data, a process may end mid-transaction)."""
        self._thread = threading.Thread(target=self._run, name="indexer", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Finish what is pending (within ``timeout``) and close the index."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def lag(self) -> tuple[int, float | None]:
        """(tasks waiting to be indexed, seconds the oldest has waited)."""
        with self._lock:
            since = self._pending_since
            count = len(self._pending)
        return count, (None if since is None or not count else round(time.monotonic() - since, 3))

    # -- the thread -----------------------------------------------------------------------------------------

    def _run(self) -> None:
        next_scan = 0.0
        with contextlib.suppress(OSError, AttributeError):  # Linux: a thread id is a process id for setpriority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        try:
            while True:
                last_pass = time.monotonic()
                stopping = self._stop.is_set()
                try:
                    self._ensure_open()
                    if self._full_scan or (self.rescan_interval_s is not None and time.monotonic() >= next_scan):
                        started = time.monotonic()
                        self._scan_all()
                        if self.rescan_interval_s is not None:
                            took = time.monotonic() - started
                            next_scan = time.monotonic() + max(self.rescan_interval_s, 10 * took)
                    self._drain()
                except sqlite3.DatabaseError as exc:
                    self._failed(exc, corrupt=not isinstance(exc, sqlite3.OperationalError))
                except OSError as exc:
                    self._failed(exc, corrupt=False)
                if stopping:
                    return
                timeout = None if self.rescan_interval_s is None else max(0.0, next_scan - time.monotonic())
                self._wake.wait(timeout if timeout is not None else 1.0)
                # Let more batches arrive before the next pass (a stop request cuts the wait short).
                self._stop.wait(max(0.0, last_pass + PASS_INTERVAL_S - time.monotonic()))
                self._wake.clear()
        finally:
            if self._conn is not None:
                self._conn.close()

    def _ensure_open(self) -> None:
        """Open the index; reopen (and rescan) when ``tasklogger reindex`` or a repair replaced the file."""
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            inode = None
        if self._conn is not None and inode == self._inode:
            return
        if self._conn is not None:
            self._conn.close()
            log.info("task index file replaced, reopening", path=str(self.path))
        self._conn, _ = index.open_writer(self.path)
        self._inode = os.stat(self.path).st_ino
        self._full_scan = True

    def _scan_all(self) -> None:
        assert self._conn is not None
        present = set(task_dirs(self.logs_dir))
        gone = index.known_task_ids(self._conn) - present
        if gone:
            self._conn.execute("BEGIN IMMEDIATE")
            index.forget(self._conn, gone)
            self._conn.execute("COMMIT")
        self._ingest(sorted(present))
        self._full_scan = False
        self.stats.scans += 1
        self.ready.set()

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch, self._pending = self._pending, set()
                self._pending_since = time.monotonic() if batch else None
            if not batch:
                return
            try:
                self._ingest(sorted(batch))
            except BaseException:
                self.touch(batch)  # not lost: tried again after the back-off
                raise
            with self._lock:
                if not self._pending:
                    self._pending_since = None

    def _ingest(self, task_ids: list[str]) -> None:
        assert self._conn is not None
        for start in range(0, len(task_ids), TASKS_PER_TRANSACTION):
            part = task_ids[start : start + TASKS_PER_TRANSACTION]
            self.stats.records_indexed += index.ingest(self._conn, self.logs_dir, part)
            self.stats.tasks_indexed += len(part)

    def _failed(self, exc: Exception, *, corrupt: bool) -> None:
        self.stats.errors += 1
        self.stats.last_error = f"{type(exc).__name__}: {exc}"
        if corrupt and self._conn is not None:
            # Corrupt under our feet: move it aside; the next turn builds a new one from the files.
            log.error("task index damaged, rebuilding from the files", error=str(exc))
            self._conn.close()
            self._conn = None
            index.move_aside(self.path)
        else:
            log.warning("task index not updated, retrying", error=str(exc), retry_in_s=RETRY_S)
        self._stop.wait(RETRY_S)


def rebuild(logs_dir: Path, path: Path, progress: Callable[[int, int], None] | None = None) -> tuple[int, int]:
    """Build a new index from every task directory and put it in place of ``path`` atomically.

    A running service notices the new file and switches to it. Returns (tasks, records).
    """
    names = sorted(task_dirs(logs_dir))
    temp = path.with_name(f"{path.name}.rebuild-{os.getpid()}")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{temp}{suffix}").unlink(missing_ok=True)
    conn, _ = index.open_writer(temp)
    records = 0
    try:
        for start in range(0, len(names), TASKS_PER_TRANSACTION):
            part = names[start : start + TASKS_PER_TRANSACTION]
            records += index.ingest(conn, logs_dir, part)
            if progress is not None:
                progress(min(start + len(part), len(names)), len(names))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    # The old file's WAL must not be replayed onto the new one: it goes first (a process still writing the old
    # file keeps its open descriptors and notices the replacement by its inode).
    for suffix in ("-wal", "-shm"):
        Path(f"{temp}{suffix}").unlink(missing_ok=True)
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    os.replace(temp, path)
    return len(names), records


def reindex_command(settings: Settings) -> None:
    """``tasklogger reindex``: rebuild with a progress bar; ConfigError (one line, exit 2) on a bad logs dir."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    logs_dir = settings.logs_dir
    if not logs_dir.is_dir():
        raise ConfigError(f"logs directory {logs_dir} does not exist or is not a directory")
    started = time.monotonic()
    columns = (TextColumn("indexing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        job = bar.add_task("indexing", total=None)

        def advance(done: int, total: int) -> None:
            bar.update(job, completed=done, total=total)

        try:
            tasks, records = rebuild(logs_dir, settings.index_file, advance)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot write the index {settings.index_file}: {exc}") from None
    took = time.monotonic() - started
    print(f"indexed {tasks} tasks, {records} records in {took:.1f}s into {settings.index_file}")

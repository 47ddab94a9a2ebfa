"""The global checkpoint chain: ``.tasklogger/checkpoints.jsonl``, one append-only chained file.

Every ``checkpoint_interval_s`` (and at shutdown) a record lists the chain heads that moved and the JSON views that
were replaced since the previous checkpoint, plus the previous checkpoint's hash (and a signature)::

    seq, id (highest stream id committed so far), type "tasklogger:checkpoint", at, reason (start, interval,
    size, shutdown), prev_checkpoint,
    heads {relpath: {records, head, size}}, views {relpath: {sha256, size} | null}

so truncating a running task's file or deleting a whole task directory is detected, not only changes to sealed
tasks. The moved set lives in memory: what a ``kill -9`` loses is covered again when the file moves next, or by the
task's digest (docs/audit.md, "What is not covered").
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from .. import records
from ..fsio import APPEND_FLAGS, DIR_FLAGS, end_of_whole_lines, read_file, write_synced
from ..projector import JSON_FILES, STATE_DIR_NAME
from .chain import last_line
from .digests import now_iso

if TYPE_CHECKING:
    from ..store import Batch
    from .signing import Signer  # cryptography is loaded only when a key is configured

log = structlog.get_logger(__name__)

CHECKPOINTS = "checkpoints.jsonl"
CHECKPOINTS_REL = f"{STATE_DIR_NAME}/{CHECKPOINTS}"
CHECKPOINT_TYPE = "tasklogger:checkpoint"
#: Files moved since the last checkpoint beyond which the next one is written at once (reason ``size``).
MAX_MOVED = 4_096


class AuditLog:
    """What the store keeps for the audit trail: the signer, the heads moved since the last checkpoint, and the
    checkpoint file's own chain head. ``note_commit`` runs on the committing thread, ``checkpoint`` on any thread:
    they share only the moved set (under a lock), and no batch ever writes the checkpoint file."""

    def __init__(self, logs_dir: Path, signer: Signer | None = None) -> None:
        self.logs_dir = logs_dir
        self.signer = signer
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        #: relpath -> (records, head, size): compact, there can be tens of thousands between two checkpoints.
        self._heads: dict[str, tuple[int, bytes, int]] = {}
        #: Set when so much moved that the next checkpoint should not wait for the interval (bounded memory).
        self.due = threading.Event()
        #: relpath -> the view's {sha256, size} as its batch wrote it, or None: read it when checkpointing.
        self._views: dict[str, dict[str, Any] | None] = {}
        self._max_key: tuple[int, int] = (0, 0)
        self._max_id = "0-0"
        self._head: tuple[int, bytes] | None = None
        self.checkpoints_written = 0

    def note_commit(self, batch: Batch) -> None:
        """Remember the heads a committed batch moved: task files, digests and dead letters (webhook buffers are
        transient: their records move into the task's file), and the views it replaced."""
        moved = [
            (f.relpath, h.seq, h.hash, h.size, h.max_key, h.max_id)
            for f, _data, h in batch.sealed
            if len(f.dir_key) == 1
        ]
        moved.extend((d.relpath, d.seq, d.hash, d.size, d.max_key, d.max_id) for d in batch.digests)
        with self._lock:
            for relpath, seq, digest, size, max_key, max_id in moved:
                self._heads[relpath] = (seq, digest, size)
                if max_key is not None and max_id is not None and max_key > self._max_key:
                    self._max_key, self._max_id = max_key, max_id
            self._views.update(batch.view_digests)  # hashed by the writer as it wrote them: nothing to read back
            if batch.result.duplicates:
                # A redelivery after a crash: the views the lost batch replaced were never checkpointed, and
                # skipped duplicates replace nothing; record them as they are now, or a later check would miss them.
                for task_id in batch.touched:
                    for name in JSON_FILES:
                        if f"{task_id}/{name}" not in batch.view_digests:
                            self._views[f"{task_id}/{name}"] = None
            if len(self._heads) + len(self._views) >= MAX_MOVED:
                self.due.set()

    def note_failed(self, batch: Batch) -> None:
        """A batch that failed may have replaced views before it failed (they are written first): until its retry
        commits, a checkpoint records them as they are on disk, not as the last committed batch left them."""
        with self._lock:
            for task_id, name in batch.json:
                self._views[f"{task_id}/{name}"] = None

    def pending(self) -> int:
        """How many files moved since the last checkpoint."""
        with self._lock:
            return len(self._heads) + len(self._views)

    def checkpoint(self, reason: str, *, always: bool = False) -> dict[str, Any] | None:
        """Append a checkpoint of what moved (durable when this returns); None when nothing moved (unless
        ``always``: the start of a service is recorded even with nothing to cover).

        On a failure the moved set is kept for the next attempt and the OSError is raised.
        """
        with self._write_lock:
            with self._lock:
                heads, views, max_id = self._heads, self._views, self._max_id
                self._heads, self._views = {}, {}
            if not heads and not views and not always:
                return None
            try:
                return self._write(reason, heads, views, max_id)
            except BaseException:
                with self._lock:  # what moved since is newer than what we took
                    self._heads = {**heads, **self._heads}
                    self._views = {**views, **self._views}
                raise

    def _write(
        self,
        reason: str,
        heads: dict[str, tuple[int, bytes, int]],
        views: dict[str, dict[str, Any] | None],
        max_id: str,
    ) -> dict[str, Any]:
        root = os.open(self.logs_dir, DIR_FLAGS & ~os.O_NOFOLLOW)
        try:
            view_entries = {
                relpath: entry if entry is not None else _view_entry(root, relpath)
                for relpath, entry in sorted(views.items())
            }
            state = os.open(STATE_DIR_NAME, DIR_FLAGS, dir_fd=root)
        finally:
            os.close(root)
        try:
            seq, prev = self._head if self._head is not None else self._recover(state)
            body: dict[str, Any] = {
                "seq": seq + 1,
                "id": max_id,
                "type": CHECKPOINT_TYPE,
                "at": now_iso(),
                "reason": reason,
                "prev_checkpoint": prev.hex() if seq else None,
                "heads": {
                    rel: {"records": n, "head": h.hex(), "size": size} for rel, (n, h, size) in sorted(heads.items())
                },
                "views": view_entries,
            }
            if self.signer is not None:
                body = self.signer.sign_body(body)
            line, digest = records.encode(body, prev)
            write_synced(state, CHECKPOINTS, APPEND_FLAGS, line)
            if seq == 0:
                os.fsync(state)  # the file's directory entry
            self._head = (seq + 1, digest)
            self.checkpoints_written += 1
            # The hash in the service's log is an outside copy of the chain's head (docs/audit.md).
            log.info("checkpoint written", seq=seq + 1, hash=digest.hex(), reason=reason, files=len(heads) + len(views))
            return body
        finally:
            os.close(state)

    def _recover(self, state: int) -> tuple[int, bytes]:
        """The file's head from its last line, after cutting a partial line a crash left."""
        try:
            fd = os.open(CHECKPOINTS, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=state)
        except FileNotFoundError:
            return 0, records.genesis(CHECKPOINTS_REL)
        try:
            size = os.fstat(fd).st_size
            keep = end_of_whole_lines(fd, size)
            if keep != size:
                log.warning("cut partial checkpoint line", size=size, kept=keep)
                os.ftruncate(fd, keep)
                os.fsync(fd)
        finally:
            os.close(fd)
        line = last_line(state, CHECKPOINTS)
        if line is None:
            return 0, records.genesis(CHECKPOINTS_REL)
        record = records.parse_line(line)  # a damaged last checkpoint stops checkpoints; verify reports it
        return record.seq, record.hash


def _view_entry(root: int, relpath: str) -> dict[str, Any] | None:
    task_id, name = relpath.split("/", 1)
    try:
        dir_fd = os.open(task_id, DIR_FLAGS, dir_fd=root)
    except OSError:
        return None
    try:
        content = read_file(dir_fd, name)
    finally:
        os.close(dir_fd)
    if content is None:
        return None
    return {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}


class Checkpointer:
    """A thread that writes a checkpoint every ``interval_s`` seconds, and a last one at ``stop``."""

    def __init__(self, audit: AuditLog, interval_s: float) -> None:
        self.audit = audit
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkpoints", daemon=True)

    def start(self) -> Checkpointer:
        """Record the start in the chain (so a logs directory a service ever wrote always has the file, and its
        absence is a finding), then start the periodic checkpoints."""
        self._checkpoint("start", always=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and write the shutdown checkpoint (after the consumer's last batch)."""
        self._stop.set()
        self.audit.due.set()  # wakes the thread
        if self._thread.is_alive():
            self._thread.join(10)
        self._checkpoint("shutdown")

    def _run(self) -> None:
        deadline = time.monotonic() + self.interval_s
        while True:
            self.audit.due.wait(max(0.0, deadline - time.monotonic()))
            if self._stop.is_set():
                return
            early = self.audit.due.is_set() and time.monotonic() < deadline
            self.audit.due.clear()
            self._checkpoint("size" if early else "interval")
            deadline = time.monotonic() + self.interval_s

    def _checkpoint(self, reason: str, *, always: bool = False) -> None:
        try:
            self.audit.checkpoint(reason, always=always)
        except (OSError, records.RecordError) as exc:
            # Kept for the next attempt; a disk fault is already reported by the consumer's /health.
            log.error("checkpoint failed", reason=reason, error=str(exc))

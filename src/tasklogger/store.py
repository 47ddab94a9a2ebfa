"""The store: builds each batch in memory and has the writer (writer.py) make it durable.

A batch collects the operations of many events in memory (group commit); ``seal`` freezes it and ``send`` hands
it to the writer child process, which replaces the JSON views (temp file, rename), appends the JSONL records with
one write per touched file, makes every step durable, and seals ended tasks; ``receive`` returns once all of it
is durable, and only then may the caller XACK. Nothing is acknowledged on a failure: the writer cuts the batch's
appends back, every cached head is dropped, and the caller retries the same entries after a back-off.

Exactly once: every JSONL record carries its stream entry id; the store keeps each file's chain head (seq, hash,
highest id, valid size), recovered from the file's last line when the file is first touched, and skips a record
whose id is already in the file. A partial last line left by a crash is cut before the next append.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import structlog

from . import records
from .audit.checkpoints import AuditLog
from .audit.digests import Sealed
from .config import Settings
from .errors import AlreadyRunning, BadEntry, ConfigError, DiskError, os_failure
from .fsio import (
    CREATE_FLAGS,
    READ_FLAGS,
    SYNCFS_TYPES,
    end_of_whole_lines,
    filesystem_type,
    open_dir,
    read_file,
    truncate_synced,
    write_all,
    write_synced,
)
from .projector import (
    INPUT,
    STATE_DIR_NAME,
    WEBHOOK_FLOW,
    AdoptWebhook,
    Append,
    Op,
    ReplaceJson,
    TaskFile,
    View,
    WebhookBuffer,
)
from .wire import Event
from .writer import WEBHOOKS_DIR, DirKey, Plan, SyncMode, WriterProcess, view_bytes, webhook_dir

log = structlog.get_logger(__name__)

STATE_DIR: DirKey = (STATE_DIR_NAME,)
WEBHOOKS_KEY: DirKey = (STATE_DIR_NAME, WEBHOOKS_DIR)
QUARANTINE_DIR = "quarantine"
DEAD_LETTERS = "dead-letters.jsonl"
_ID_RE = re.compile(rb'^\{"seq":\d+,"id":"([^"\\]+)"', re.MULTILINE)


@dataclass(slots=True)
class Head:
    """Where a JSONL file's chain stands."""

    seq: int
    hash: bytes
    #: Highest stream id in the file, as a sort key; None for an empty file.
    max_key: tuple[int, int] | None
    #: The same id as text (what an out-of-order record carries as ``max_id``).
    max_id: str | None
    size: int

    def copy(self) -> Head:
        """An independent copy (``dataclasses.replace`` costs several times more, and this runs per file and batch)."""
        return Head(self.seq, self.hash, self.max_key, self.max_id, self.size)


@dataclass(slots=True)
class JsonlFile:
    """One JSONL file: its committed head, and what the open batch adds to it."""

    dir_key: DirKey
    name: str
    committed: Head
    exists: bool
    head: Head = field(init=False)
    pending: list[bytes] = field(default_factory=list)
    #: Stream ids of the pending records.
    pending_ids: list[str] = field(default_factory=list)
    #: Their bodies, kept only for a webhook buffer (moved into its task by re-appending them). Elsewhere the
    #: decoded event is freed once its line is encoded: a batch in flight costs a third of the memory.
    pending_bodies: list[dict[str, Any]] = field(default_factory=list)
    #: Every id in the file, loaded only when an id at or below the head must be checked (rare).
    ids: set[str] | None = None
    #: Ids and (buffers only) bodies of the sealed batch that is being committed while the next one is built.
    inflight_ids: list[str] = field(default_factory=list)
    inflight_bodies: list[dict[str, Any]] = field(default_factory=list)
    #: Moved into its task by a batch being built: the committing batch must not cache it again.
    adopted: bool = False

    #: A webhook buffer's records are moved into their task's file later: their bodies are kept until then.
    keeps_bodies: bool = field(init=False)

    def __post_init__(self) -> None:
        self.head = self.committed.copy()
        self.keeps_bodies = self.dir_key[:2] == WEBHOOKS_KEY

    @property
    def relpath(self) -> str:
        """Path relative to the logs directory, ``/``-separated (the chain's genesis input)."""
        return "/".join((*self.dir_key, self.name))


@dataclass(slots=True)
class CommitResult:
    """What one committed batch did, for the metrics and the index."""

    written: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    tasks: set[str] = field(default_factory=set)
    finished_tasks: set[str] = field(default_factory=set)
    by_type: dict[str, int] = field(default_factory=dict)
    #: Entries in the batch (written, duplicates and dead letters alike).
    entries: int = 0
    #: Wall time of ``commit`` and, within it, of waiting for the disk to make the batch durable.
    commit_seconds: float = 0.0
    sync_seconds: float = 0.0
    #: The consumer is behind: the next batch, read while this one was written, is a full MAX_BATCH_SIZE.
    backlog: bool = False


class _Lru(OrderedDict[Any, Any]):
    """A dict that forgets its least recently used entries beyond ``limit``: memory stays flat over 1M tasks.

    Locked: ``Batch.commit`` may be called from any thread (the consumer builds and finishes batches on one)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.lock = threading.Lock()

    def get_fresh(self, key: Any) -> Any:
        with self.lock:
            value = self.get(key, _MISSING)
            if value is not _MISSING:
                self.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        with self.lock:
            self[key] = value
            self.move_to_end(key)
            while len(self) > self.limit:
                self.popitem(last=False)

    def discard(self, key: Any) -> None:
        with self.lock:
            self.pop(key, None)

    def forget_all(self) -> None:
        with self.lock:
            self.clear()


_MISSING = object()
#: The view of an event whose projection needs nothing stored (most of them): one shared, immutable instance.
_NO_VIEW = View()


class Store:
    """Owns the logs directory: its lock, its state and the writer process. One batch is built at a time, while
    at most one sealed batch is being written."""

    def __init__(
        self,
        logs_dir: Path,
        *,
        fsync_threads: int = 8,
        cache_size: int = 4096,
        sync_mode: SyncMode = "auto",
        log_level: str = "INFO",
        log_format: str = "console",
    ) -> None:
        self.root = logs_dir
        self.sync_mode = sync_mode
        #: One syncfs per durability step instead of an fsync per file and directory (decided in ``open``).
        self.fs_sync = False
        self.filesystem = "unknown"
        self.fsync_threads = fsync_threads
        self.log_level = log_level
        self.log_format = log_format
        self._writer: WriterProcess | None = None
        self._closed = False
        self._files: _Lru = _Lru(cache_size)
        # 01-input.json is read back only between a task's created and context_built events, a few batches
        # apart; its enriched prompt can be 50 KB, so few are kept.
        self._inputs: _Lru = _Lru(256)
        self._webhook_tasks: _Lru = _Lru(cache_size)
        self._root_fd = -1
        self._lock_fd = -1
        #: The batch being built (at most one); a sealed batch may still be committing meanwhile.
        self._batch: Batch | None = None
        #: The audit trail's state: signer, heads moved since the last checkpoint (docs/audit.md).
        self.audit = AuditLog(logs_dir)
        #: Files of the sealed batch being committed: never recovered from disk (half written) until it is done.
        self._inflight: dict[tuple[DirKey, str], JsonlFile] = {}
        #: Its views and webhook mappings, which are not on disk yet either: the next batch reads them from here.
        self._inflight_views: dict[tuple[str, str], dict[str, Any]] = {}
        self._inflight_webhooks: dict[str, str] = {}

    # -- life cycle ---------------------------------------------------------------------------------------

    def open(self) -> None:
        """Open the logs directory and create the reserved state directory (durably)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fd, created = open_dir(STATE_DIR_NAME, dir_fd=self._root_fd, create=True)
            os.close(fd)
            if created:
                os.fsync(self._root_fd)
        except OSError as exc:
            raise DiskError(f"cannot open logs directory {self.root}: {exc.strerror}", exc.errno) from exc
        self.filesystem = filesystem_type(self.root)
        self.fs_sync = self.sync_mode == "fs" or (self.sync_mode == "auto" and self.filesystem in SYNCFS_TYPES)
        self.writer()  # started now, from the thread that opens the store (it dies with that thread's process)

    def writer(self) -> WriterProcess:
        """The writer child process that makes batches durable (started by ``open``)."""
        if self._closed:  # e.g. a consumer thread that outlived the stop: its batch stays pending, unwritten
            raise DiskError(f"the store of {self.root} is closed", errno.EBADF)
        if self._writer is None:
            self._writer = WriterProcess(
                self.root, sync_mode=self.sync_mode, fs_sync=self.fs_sync, fsync_threads=self.fsync_threads,
                log_level=self.log_level, log_format=self.log_format,
            )  # fmt: skip
            self._writer.start()
        return self._writer

    def close(self) -> None:
        """Stop the writer process, then release the directory descriptor and the writer lock."""
        self._closed = True
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = -1

    def lock(self) -> None:
        """Become the only writer of this logs directory; raises AlreadyRunning if another process is.

        An flock dies with its process, so a kill -9 never leaves a stale lock behind.
        """
        path = self.root / STATE_DIR_NAME / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise AlreadyRunning(f"{self.root} is already written by pid {holder}; stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def consumer_name(self) -> str:
        """This logs directory's stable consumer name, created once, so a restart finds its own pending entries."""
        path = self.root / STATE_DIR_NAME / "consumer-name"
        try:
            name = path.read_text().strip()
            if name:
                return name
        except FileNotFoundError:
            pass
        name = f"tasklogger-{socket.gethostname()[:40]}-{secrets.token_hex(4)}"
        tmp = path.with_name(".consumer-name.tmp")
        fd = os.open(tmp, CREATE_FLAGS, 0o644)
        try:
            write_all(fd, name.encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return name

    def forget(self) -> None:
        """Drop every cached head: the next batch recovers them from disk (after a failed commit)."""
        self._files.forget_all()
        self._inputs.forget_all()
        self._webhook_tasks.forget_all()

    # -- batches ------------------------------------------------------------------------------------------

    def begin(self) -> Batch:
        """Start a batch; ``commit`` or ``abort`` it before the next."""
        assert self._batch is None, "a batch is already open"
        self._batch = Batch(self)
        return self._batch

    # -- state recovery (read side of the store, used while projecting) -------------------------------------

    def _dir_fd(self, batch: Batch, key: DirKey) -> int | None:
        """An fd for directory ``key`` (cached for the batch); None if it does not exist (only the writer creates)."""
        if key in batch.dir_fds:
            return batch.dir_fds[key]
        parent = self._root_fd
        for depth in range(1, len(key) + 1):
            sub = key[:depth]
            if sub in batch.dir_fds:
                parent = batch.dir_fds[sub]
                continue
            if sub in batch.missing_dirs:
                return None
            try:
                fd, _created = open_dir(sub[-1], dir_fd=parent)
            except FileNotFoundError:
                # Remembered for the batch: a new task's files are all looked up, and none can exist yet (only the
                # writer creates, and what the committing batch writes is read from memory, not from here).
                batch.missing_dirs.add(sub)
                return None
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP):  # a file or a symlink where a directory belongs
                    raise BadEntry("task_directory_unsafe", f"{'/'.join(sub)} is not a plain directory") from None
                raise
            batch.dir_fds[sub] = fd
            parent = fd
        return parent

    def _jsonl(self, batch: Batch, key: DirKey, name: str) -> JsonlFile:
        cache_key = (key, name)
        cached = batch.files.get(cache_key) or self._inflight.get(cache_key) or self._files.get_fresh(cache_key)
        if cached is _MISSING or cached is None:
            cached = self._recover(batch, key, name)
            self._files.put(cache_key, cached)
        return cached

    def _recover(self, batch: Batch, key: DirKey, name: str) -> JsonlFile:
        """Read a JSONL file's chain head from its last line, cutting a partial tail first."""
        relpath = "/".join((*key, name))
        empty = Head(0, records.genesis(relpath), None, None, 0)
        dir_fd = self._dir_fd(batch, key)
        if dir_fd is None:
            return JsonlFile(key, name, empty, exists=False)
        try:  # only "no such file" means absent: any other error (EIO, EACCES) fails the batch, to be retried
            fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return JsonlFile(key, name, empty, exists=False)
        try:
            size = os.fstat(fd).st_size
            valid_end = end_of_whole_lines(fd, size)
            while valid_end > 0:
                line_start = end_of_whole_lines(fd, valid_end - 1)
                line = os.pread(fd, valid_end - line_start, line_start)
                try:
                    last = records.parse_line(line)
                except records.RecordError as exc:
                    # A whole line that is not a record is damage (or tampering): keep it aside, never lose it.
                    self._quarantine(relpath, line_start, line, str(exc))
                    valid_end = line_start
                    continue
                max_id = last.entry_id
                carried = last.body.get("max_id")  # a record appended out of stream order names the file's max
                if isinstance(carried, str) and records.stream_id_key(carried) > records.stream_id_key(max_id):
                    max_id = carried
                head = Head(last.seq, last.hash, records.stream_id_key(max_id), max_id, valid_end)
                break
            else:
                head = empty
        finally:
            os.close(fd)
        if head.size != size:
            log.warning("cut partial tail", file=relpath, size=size, kept=head.size)
            truncate_synced(dir_fd, name, head.size)
        # What is found here may have been written but never made durable (by a writer that died, or a process
        # killed before its sync): the batch that skips records as already stored makes the file durable first.
        batch.recovered.append((key, name))
        return JsonlFile(key, name, head, exists=True)

    def _quarantine(self, relpath: str, offset: int, data: bytes, why: str) -> None:
        log.error("damaged record moved to quarantine", file=relpath, offset=offset, reason=why)
        state_fd = os.open(STATE_DIR_NAME, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=self._root_fd)
        try:
            qfd, _created = open_dir(QUARANTINE_DIR, dir_fd=state_fd, create=True)
            os.fsync(state_fd)
        finally:
            os.close(state_fd)
        try:
            # The time in the name keeps two damaged lines found at the same offset (on different days) apart.
            name = f"{relpath.replace('/', '__')}.{offset}.{time.time_ns()}.bin"
            write_synced(qfd, name, CREATE_FLAGS | os.O_EXCL, data)
            os.fsync(qfd)
        finally:
            os.close(qfd)

    def _ids_in(self, batch: Batch, f: JsonlFile) -> set[str]:
        """Every stream id already in ``f`` (committed and pending); loaded once, only for out-of-order ids."""
        if f.ids is None:
            ids: set[str] = set()
            dir_fd = self._dir_fd(batch, f.dir_key)
            if f.exists and dir_fd is not None:
                fd = os.open(f.name, READ_FLAGS, dir_fd=dir_fd)
                try:
                    content = os.pread(fd, f.committed.size, 0)
                finally:
                    os.close(fd)
                ids.update(m.decode() for m in _ID_RE.findall(content))
            ids.update(f.inflight_ids)
            ids.update(f.pending_ids)
            f.ids = ids
        return f.ids

    def _input_doc(self, batch: Batch, task_id: str) -> dict[str, Any] | None:
        if (task_id, INPUT) in batch.json:
            return batch.json[(task_id, INPUT)]
        if (task_id, INPUT) in self._inflight_views:
            return self._inflight_views[(task_id, INPUT)]
        cached = self._inputs.get_fresh(task_id)
        if cached is not _MISSING:
            return cached  # type: ignore[no-any-return]
        doc = self._read_json(batch, (task_id,), INPUT)
        self._inputs.put(task_id, doc)
        return doc

    def _read_json(self, batch: Batch, key: DirKey, name: str) -> dict[str, Any] | None:
        dir_fd = self._dir_fd(batch, key)
        raw = read_file(dir_fd, name) if dir_fd is not None else None
        if raw is None:
            return None
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.error("unreadable JSON view will be rewritten", file="/".join((*key, name)))
            return None
        return doc if isinstance(doc, dict) else None

    def _webhook_task(self, batch: Batch, webhook_id: str) -> str | None:
        if webhook_id in batch.webhook_tasks:
            return batch.webhook_tasks[webhook_id]
        if webhook_id in self._inflight_webhooks:
            return self._inflight_webhooks[webhook_id]
        cached = self._webhook_tasks.get_fresh(webhook_id)
        if cached is not _MISSING:
            return cached  # type: ignore[no-any-return]
        dir_fd = self._dir_fd(batch, webhook_dir(webhook_id))
        task: str | None = None
        if dir_fd is not None:
            with contextlib.suppress(FileNotFoundError):  # any other error fails the batch, to be retried
                task = os.readlink(f"{webhook_id}.task", dir_fd=dir_fd)
        self._webhook_tasks.put(webhook_id, task)
        return task


class Batch:
    """One group commit. Created by Store.begin()."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.dir_fds: dict[DirKey, int] = {}
        #: Files whose heads this batch read from disk: made durable with it (see Store._recover).
        self.recovered: list[tuple[DirKey, str]] = []
        #: Directories found missing while building (none of their files exists: a new task's).
        self.missing_dirs: set[DirKey] = set()
        self.files: dict[tuple[DirKey, str], JsonlFile] = {}
        self.json: dict[tuple[str, str], dict[str, Any]] = {}
        self.webhook_tasks: dict[str, str] = {}
        self.markers: dict[str, str] = {}
        self.unlinks: list[tuple[DirKey, str]] = []
        self.result = CommitResult()
        #: Tasks the batch touched, duplicates included: each is (re)sealed if it has ended and changed.
        self.touched: set[str] = set()
        #: Digests this batch wrote (for the checkpoint chain).
        self.digests: list[Sealed] = []
        #: (file, bytes to append, head after them), fixed by ``seal``.
        self.sealed: list[tuple[JsonlFile, bytes, Head]] = []
        self._sent_at = 0.0
        self._dead_letters: JsonlFile | None = None
        #: relpath -> {sha256, size} of each view this batch replaces (for the checkpoint chain).
        self.view_digests: dict[str, dict[str, Any]] = {}

    # -- building ---------------------------------------------------------------------------------------------

    def view(self, event: Event) -> View:
        """What the projector needs to know about ``event``'s task, read from the batch or the disk."""
        store = self.store
        if event.task_id is None:
            assert event.webhook_event_id is not None
            return View(webhook_task=store._webhook_task(self, event.webhook_event_id))
        if event.type in ("task:created", "task:context_built"):
            return View(input_doc=store._input_doc(self, event.task_id))
        return _NO_VIEW

    def apply(self, event: Event, ops: list[Op]) -> bool:
        """Add an event's operations; returns False (and changes nothing) if the event is already stored."""
        primary = next(op for op in ops if isinstance(op, Append))
        if isinstance(primary.target, TaskFile):
            self.touched.add(primary.target.task_id)
        primary_file = self._file_of(primary.target)
        if self._holds(primary_file, primary.body["id"]):
            for op in ops:
                if isinstance(op, AdoptWebhook):
                    self._adopt(op)  # idempotent: finishes a move a crash interrupted
            self.result.duplicates += 1
            return False
        for op in ops:
            if isinstance(op, Append):
                self._append(primary_file if op is primary else self._file_of(op.target), op.body)
            elif isinstance(op, ReplaceJson):
                self.json[(op.task_id, op.name)] = op.content
            else:
                self._adopt(op)
        self.result.written += 1
        self.result.by_type[event.type] = self.result.by_type.get(event.type, 0) + 1
        if event.task_id is not None:
            self.result.tasks.add(event.task_id)
            if event.type in ("task:completed", "task:failed"):
                self.result.finished_tasks.add(event.task_id)
        elif isinstance(primary.target, TaskFile):
            self.result.tasks.add(primary.target.task_id)
        return True

    def is_stored(self, ops: list[Op]) -> bool:
        """Whether the event these operations come from is already in its file."""
        primary = next(op for op in ops if isinstance(op, Append))
        return self._holds(self._file_of(primary.target), primary.body["id"])

    def is_dead_lettered(self, entry_id: str) -> bool:
        """Whether this entry is already in the dead-letter store (a dead letter is never written again)."""
        return self._holds(self._dead_letter_file(), entry_id)

    def _dead_letter_file(self) -> JsonlFile:
        if self._dead_letters is None:  # asked once per entry: looked up once per batch
            self._dead_letters = self.store._jsonl(self, STATE_DIR, DEAD_LETTERS)
        return self._dead_letters

    def dead_letter(self, body: dict[str, Any]) -> bool:
        """Append a dead-letter record (``body`` holds ``id``, ``reason``, ...); False if already recorded."""
        if self._append(self._dead_letter_file(), body):
            self.result.dead_letters += 1
            return True
        self.result.duplicates += 1
        return False

    def _file_of(self, target: TaskFile | WebhookBuffer) -> JsonlFile:
        if isinstance(target, TaskFile):
            return self.store._jsonl(self, (target.task_id,), target.name)
        return self.store._jsonl(self, webhook_dir(target.webhook_id), f"{target.webhook_id}.jsonl")

    def _holds(self, f: JsonlFile, entry_id: str) -> bool:
        """Whether ``f`` (on disk or in this batch) already holds a record of ``entry_id``."""
        max_key = f.head.max_key
        if max_key is None or records.stream_id_key(entry_id) > max_key:
            return False
        return entry_id in self.store._ids_in(self, f)

    def _append(self, f: JsonlFile, body: dict[str, Any]) -> bool:
        entry_id = body["id"]
        key = records.stream_id_key(entry_id)
        head = f.head
        if head.max_key is not None and key <= head.max_key and entry_id in self.store._ids_in(self, f):
            return False
        seq = head.seq + 1
        record = {"seq": seq, **body}
        late = head.max_key is not None and key < head.max_key
        if late:
            # An older entry arriving after newer ones (claimed from a dead consumer, adopted late): it is kept,
            # and it names the file's highest id so that recovery from the last line still knows it.
            record["max_id"] = head.max_id
        line, digest = records.encode(record, head.hash)
        f.pending.append(line)
        f.pending_ids.append(entry_id)
        if f.keeps_bodies:
            f.pending_bodies.append(body)
        if f.ids is not None:
            f.ids.add(entry_id)
        # In place: a file's head is its own (seal, finish and a reset copy it), and this runs once per event.
        head.seq, head.hash, head.size = seq, digest, head.size + len(line)
        if not late:
            head.max_key, head.max_id = key, entry_id
        self.files[(f.dir_key, f.name)] = f
        return True

    def _adopt(self, op: AdoptWebhook) -> None:
        store = self.store
        if store._webhook_task(self, op.webhook_id) is None:
            self.webhook_tasks[op.webhook_id] = op.task_id
            self.markers[op.webhook_id] = op.task_id
        buffer = store._jsonl(self, webhook_dir(op.webhook_id), f"{op.webhook_id}.jsonl")
        if not buffer.exists and not buffer.pending and not buffer.inflight_bodies:
            return
        target = store._jsonl(self, (op.task_id,), WEBHOOK_FLOW)
        for body in self._buffered_bodies(buffer):
            self._append(target, body)
        buffer.pending.clear()
        buffer.pending_ids.clear()
        buffer.pending_bodies.clear()
        self.files.pop((buffer.dir_key, buffer.name), None)
        if buffer.exists or buffer.inflight_bodies:
            self.unlinks.append((buffer.dir_key, buffer.name))
        store._files.discard((buffer.dir_key, buffer.name))
        buffer.adopted = True
        self.result.tasks.add(op.task_id)

    def _buffered_bodies(self, buffer: JsonlFile) -> Iterator[dict[str, Any]]:
        if buffer.exists and buffer.committed.size:
            dir_fd = self.store._dir_fd(self, buffer.dir_key)
            assert dir_fd is not None
            fd = os.open(buffer.name, READ_FLAGS, dir_fd=dir_fd)
            try:
                content = os.pread(fd, buffer.committed.size, 0)
            finally:
                os.close(fd)
            for offset, line in _lines_with_offsets(content):
                try:
                    body = records.parse_line(line).body
                except records.RecordError as exc:
                    self.store._quarantine(buffer.relpath, offset, line, str(exc))
                    continue
                del body["seq"]
                body.pop("max_id", None)  # belongs to the buffer file, not to the event
                yield body
        yield from list(buffer.inflight_bodies)
        yield from list(buffer.pending_bodies)

    # -- committing -------------------------------------------------------------------------------------------

    def commit(self) -> CommitResult:
        """Make the whole batch durable; raises DiskError or StorageDamage (after undoing what it can)."""
        self.seal()
        try:
            result = self.write()
        except BaseException:
            self.finish(ok=False)
            raise
        self.finish(ok=True)
        return result

    # The pipelined form of commit: ``seal`` and ``finish`` on the thread that builds batches, ``write`` on another,
    # so the next batch is built (on top of this one's heads) while this one waits for the disk.

    def seal(self) -> None:
        """Freeze what this batch writes and let the next batch begin; its in-memory state is visible to it."""
        store = self.store
        self.sealed = [(f, b"".join(f.pending), f.head.copy()) for f in self.files.values() if f.pending]
        for f, _data, _head in self.sealed:
            f.inflight_ids, f.inflight_bodies = f.pending_ids, f.pending_bodies
            f.pending, f.pending_ids, f.pending_bodies = [], [], []
            store._inflight[(f.dir_key, f.name)] = f
        # Not on disk yet, so not in the (bounded) caches either: the next batch reads them from here until then.
        store._inflight_views = self.json
        store._inflight_webhooks = self.webhook_tasks
        store._batch = None

    def write(self) -> CommitResult:
        """Write the sealed batch and make it durable: ``send`` it, then ``receive`` the outcome."""
        self.send()
        return self.receive()

    def send(self) -> None:
        """Hand the sealed batch to the writer child process (writer.py), which starts writing it at once.

        The caller builds the next batch until it calls ``receive``: the writing is done by another interpreter,
        so the two never share the GIL, and no thread of this process waits on the disk."""
        store = self.store
        # Its bytes are released below: sending the same batch twice would write nothing and still move the heads.
        assert not self._sent_at, "a batch is sent once; a failed one is rebuilt from its entries"
        self._sent_at = time.perf_counter()
        try:
            plan = Plan(
                views=[(task_id, name, view_bytes(doc)) for (task_id, name), doc in self.json.items()],
                appends=[(f.dir_key, f.name, f.exists, f.committed.size, data) for f, data, _head in self.sealed],
                markers=list(self.markers.items()),
                unlinks=self.unlinks,
                seal_tasks=sorted(self.touched | self.result.tasks),
                recovered=self.recovered,
                signing_key=store.audit.signer.raw if store.audit.signer is not None else None,
            )
            store.writer().send(plan)
        except OSError as exc:
            raise os_failure(exc, "writing the logs directory failed") from exc
        finally:
            self._close()  # the descriptors opened while building: the writer opens its own
            # The writer has its own copy now: a batch's megabytes are not held twice while the next one is built.
            self.sealed = [(f, b"", head) for f, _data, head in self.sealed]

    def receive(self) -> CommitResult:
        """Wait until the batch ``send`` handed over is durable; raises what writing it raised (DiskError,
        StorageDamage, BadEntry) after the writer cut its appends back."""
        try:
            outcome = self.store.writer().receive()
        except OSError as exc:
            raise os_failure(exc, "writing the logs directory failed") from exc
        if outcome.error is not None:
            kind, code, text = outcome.error
            if kind == "os":
                assert isinstance(code, int)
                raise os_failure(OSError(code, text), "writing the logs directory failed")
            if kind == "bad_entry":
                raise BadEntry(str(code), text)
            raise RuntimeError(f"writing the batch failed: {text}")
        self.digests = outcome.digests
        self.view_digests = outcome.view_digests
        self.result.sync_seconds = outcome.sync_seconds
        self.result.commit_seconds = time.perf_counter() - self._sent_at
        return self.result

    def finish(self, *, ok: bool) -> None:
        """After ``write``, on the building thread: advance the committed heads, or forget everything on failure
        (a batch built on top of this one must then be aborted too)."""
        store = self.store
        store._inflight.clear()
        store._inflight_views = {}
        store._inflight_webhooks = {}
        if not ok:
            for f, _data, _head in self.sealed:
                f.inflight_ids, f.inflight_bodies = [], []
            self._reset_files()
            store.forget()
            store.audit.note_failed(self)
            return
        for f, _data, head in self.sealed:
            f.committed = head
            f.exists = True
            f.inflight_ids, f.inflight_bodies = [], []
            if not f.pending:
                f.head = head.copy()  # a batch built on top of this one was aborted (it reset to the old head)
            if not f.adopted:
                store._files.put((f.dir_key, f.name), f)
        for (task_id, name), doc in self.json.items():
            if name == INPUT:
                store._inputs.put(task_id, doc)
        for webhook_id, task_id in self.webhook_tasks.items():
            store._webhook_tasks.put(webhook_id, task_id)
        store.audit.note_commit(self)

    def abort(self) -> None:
        """Forget the batch (after an error while building it): nothing was written."""
        self._reset_files()
        self.store.forget()
        self._close()
        self.store._batch = None

    def _reset_files(self) -> None:
        for f in self.files.values():
            f.pending.clear()
            f.pending_ids.clear()
            f.pending_bodies.clear()
            f.ids = None
            f.head = f.committed.copy()

    def _close(self) -> None:
        for fd in self.dir_fds.values():
            os.close(fd)
        self.dir_fds.clear()


def _lines_with_offsets(content: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    for line in content.splitlines(keepends=True):
        yield offset, line
        offset += len(line)


def open_store(settings: Settings) -> Store:
    """Open the logs directory for writing (its writer child starts now), or raise ConfigError naming it."""
    store = Store(
        settings.logs_dir, fsync_threads=settings.fsync_threads, sync_mode=settings.sync_mode,
        log_level=settings.log_level, log_format=settings.log_format,
    )  # fmt: skip
    if settings.signing_key is not None:
        from .audit.signing import KeyFileError, load_signer  # cryptography only when a key is configured

        try:
            store.audit.signer = load_signer(settings.signing_key)
        except KeyFileError as exc:
            raise ConfigError(str(exc)) from None
    try:
        store.open()
        probe = settings.state_dir / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except (DiskError, OSError) as exc:
        raise ConfigError(f"logs directory {settings.logs_dir} cannot be created or written: {exc}") from None
    return store

"""Writing a sealed batch: every write, sync and digest of one group commit, run in a child process.

The store (``store.py``) decides what a batch writes and hands it over as a ``Plan``: the JSON views to replace,
the bytes to append to each JSONL file, the webhook mappings to create, the adopted buffers to remove and the
tasks to seal. This module is the only code that writes a batch to the logs directory, in the order that makes a
crash at any point safe (docs/records.md):

1. the views (temp file, rename), made durable before the records that would make their redelivery a skipped
   duplicate;
2. the records, one write per file;
3. the webhook mappings, only once the records they route past are durable;
4. the digests of the tasks that ended (issue 8's seals), before the acknowledgement.

Why a process: building the next batch is Python on the consumer's thread, writing this one is hundreds of system
calls. In one interpreter the two contend for the GIL (every return from a system call waits for the builder to
let go), and measured, building and writing side by side in threads was slower than doing them one after the
other. The child has its own interpreter: the next batch is built at full speed while this one is written.

The child (``python -m tasklogger.writer``) takes one plan at a time and answers with an ``Outcome`` on its
stdout: pickles, since the two ends are the same program. A plan is copied into memory both processes map (a
memfd), and only its length goes down the child's stdin, so handing over a batch's megabytes never waits for the
child to read them. It dies
with the service: the kernel kills it when its parent exits, even by ``kill -9`` (PR_SET_PDEATHSIG), so it never
writes behind a restarted instance's back; it also ends when its stdin closes.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import hashlib
import mmap
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import orjson

from .audit.digests import Sealed, seal_batch, undo_seals
from .errors import BadEntry, WriterProcessFailed
from .fsio import (
    APPEND_FLAGS,
    CREATE_FLAGS,
    DIR_FLAGS,
    READ_FLAGS,
    Syncer,
    append_kept_open,
    open_dir,
    syncfs,
    truncate_synced,
    write_all,
    write_file,
    write_synced,
)
from .logs import get_logger
from .projector import STATE_DIR_NAME

log = get_logger(__name__)

DirKey = tuple[str, ...]
SyncMode = Literal["auto", "fs", "file"]
#: Per-file sync: a batch touching fewer files than this does its writes and fsyncs on the writer's own thread.
#: Live batches touch a few files; handing each to a pool thread cost more (context switches were a quarter of
#: the writer's CPU time at 1,000 events/s on two cores) than overlapping a few fsyncs saved.
POOL_MIN_FILES = 8
#: Directories the writer remembers as existing (then it forgets them all and mkdirs again as it meets them).
KNOWN_DIRS_LIMIT = 8192
WEBHOOKS_DIR = "webhooks"
#: A message's header: where its pickle is (inline after the header, or in the shared memory) and its size.
_HEADER = struct.Struct("<BQ")
_INLINE, _SHARED = 0, 1
#: The shared memory a plan is handed over in (sparse: only what the largest plan touched is resident).
SHARED_BYTES = 64 << 20
_PR_SET_PDEATHSIG = 1


@dataclass(slots=True)
class Plan:
    """Everything one batch writes, in a form that crosses a pipe."""

    #: (task id, file name, content) of each JSON view to replace.
    views: list[tuple[str, str, bytes]] = field(default_factory=list)
    #: (directory, file name, whether the file exists, its committed size, bytes to append) of each JSONL file.
    appends: list[tuple[DirKey, str, bool, int, bytes]] = field(default_factory=list)
    #: (webhook id, task id) of each webhook -> task mapping to create once the records are durable.
    markers: list[tuple[str, str]] = field(default_factory=list)
    #: (reserved directory, file name) of each webhook buffer moved into its task.
    unlinks: list[tuple[DirKey, str]] = field(default_factory=list)
    #: Every task the batch touched (duplicates included): each one that ended and changed is (re)sealed.
    seal_tasks: list[str] = field(default_factory=list)
    #: The raw Ed25519 private key digests are signed with, if any.
    signing_key: bytes | None = None
    #: (directory, file name) of files whose heads the batch read from disk: fsynced with it, because what a
    #: writer that died (or a killed process) left there may not be durable, and the batch counts on it.
    recovered: list[tuple[DirKey, str]] = field(default_factory=list)


@dataclass(slots=True)
class Outcome:
    """What writing a plan did, or why it failed (``error``)."""

    digests: list[Sealed] = field(default_factory=list)
    sync_seconds: float = 0.0
    #: relpath -> {sha256, size} of each view written (what the next checkpoint records: never read back).
    view_digests: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: ("os", errno, message), ("bad_entry", reason, detail) or ("defect", 0, repr of the exception).
    error: tuple[str, int | str, str] | None = None


class PlanWriter:
    """Writes plans under one logs directory (in the child process; tests may use it in-process too)."""

    def __init__(self, root: Path, *, sync_mode: SyncMode, fs_sync: bool, fsync_threads: int) -> None:
        self.root_fd = os.open(root, DIR_FLAGS & ~os.O_NOFOLLOW)  # LOGS_DIR itself may be a symlink
        #: Every step made durable by syncfs: ``fs`` mode, or ``auto`` on a filesystem where the store allows it.
        self.fs_sync = fs_sync or sync_mode == "fs"
        #: Per-file sync: the fsyncs of a batch's files run in parallel (one journal commit serves them all).
        self.syncer = Syncer(fsync_threads)
        #: With syncfs, the writes only reach the page cache: one thread does them faster than a pool (measured:
        #: the pool's hand-offs cost more than the system calls they spread).
        self.serial = Syncer(1)
        #: Directories known to exist: no mkdir attempt for them (one system call less per task and batch).
        self.known_dirs: set[DirKey] = set()
        #: Directories whose adopted buffers were removed after the last durable step (synced by the next one).
        self.removed_dirs: set[DirKey] = set()
        self._signer_key: bytes | None = None
        self._signer: Any = None

    def remember_dir(self, key: DirKey) -> None:
        """Note that directory ``key`` exists (a bounded set: memory stays flat over millions of tasks)."""
        if len(self.known_dirs) >= KNOWN_DIRS_LIMIT:
            self.known_dirs.clear()
        self.known_dirs.add(key)

    def close(self) -> None:
        """Release the directory descriptor and the fsync threads."""
        os.close(self.root_fd)
        self.syncer.close()
        self.serial.close()

    def write(self, plan: Plan) -> Outcome:
        """Write ``plan`` and make it durable; raises OSError or BadEntry after cutting its appends back."""
        run = _Run(self, plan)
        try:
            return run.execute()
        finally:
            run.close()

    def signer(self, key: bytes | None) -> Any:
        """The signer for ``key`` (cached; cryptography is loaded only when a key is configured)."""
        if key != self._signer_key:
            if key is None:
                self._signer = None
            else:
                from .audit.signing import Signer

                self._signer = Signer.from_raw(key)
            self._signer_key = key
        return self._signer


class _Run:
    """One plan being written: its directory descriptors and the directories to sync."""

    def __init__(self, writer: PlanWriter, plan: Plan) -> None:
        self.writer = writer
        self.plan = plan
        self.dir_fds: dict[DirKey, int] = {}
        self.sync_dirs: set[DirKey] = set()
        self.digests: list[Sealed] = []
        self.jobs = writer.syncer

    def close(self) -> None:
        for fd in self.dir_fds.values():
            os.close(fd)
        self.dir_fds.clear()

    def execute(self) -> Outcome:
        writer, plan = self.writer, self.plan
        out = Outcome()
        try:
            # Live batches of a few files too: one syncfs per step beat an fsync per file and directory at 1,000
            # events/s (p99 7-11 ms against 11-16 ms, five alternating pairs), the kernel's inode and device work
            # being the writer's cost on two cores. It also waits for whatever else is dirty on the filesystem:
            # TASKLOGGER_SYNC_MODE=file where other programs write much to the same one.
            if writer.fs_sync:
                self.jobs = writer.serial
                out.sync_seconds = self._commit_with_syncfs()
            else:
                if len(plan.appends) + len(plan.views) < POOL_MIN_FILES:
                    self.jobs = writer.serial
                started = time.perf_counter()
                self._write_json_views(synced=True)
                self._append_records_synced()
                if plan.markers:
                    self._write_markers()  # after the records they route are fsynced
                    self.jobs.fsync_all(self._fds_of(self.sync_dirs))
                out.sync_seconds = time.perf_counter() - started
                self.digests, waited = self._seal(durable=True)  # once the records are durable, before the XACK
                out.sync_seconds += waited
        except BaseException:
            # Whatever failed (the disk, or a task directory swapped for a symlink since it was opened), nothing of
            # this batch counts as stored: cut the appends back; the store forgets every cached head.
            self._undo_appends()
            writer.known_dirs.clear()
            raise
        out.digests = self.digests
        out.view_digests = {
            f"{task_id}/{name}": {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}
            for task_id, name, content in plan.views
        }
        # Everything is durable now (earlier removals too); removing adopted buffers is clean-up that a later
        # adoption redoes.
        writer.removed_dirs = set()
        try:
            self._unlink_adopted()
        except OSError as exc:
            log.warning("could not remove adopted webhook buffers", error=str(exc))
        return out

    def _seal(self, *, durable: bool) -> tuple[list[Sealed], float]:
        writer = self.writer
        signer = writer.signer(self.plan.signing_key)
        return seal_batch(
            writer.root_fd, self.plan.seal_tasks, signer, self.jobs, batch_syncfs=not durable, durable=durable
        )

    def _commit_with_syncfs(self) -> float:
        """The same steps, each made durable by one syncfs of the whole filesystem: the views before the records
        that would make their redelivery a skipped duplicate, the records before the mappings that route later
        steps past them and before the digests that seal them. New files, renames and directory entries are
        covered by the same calls."""
        root = self.writer.root_fd
        waited = 0.0
        if self.plan.views:
            self._write_json_views(synced=False)
            waited += _timed(syncfs, root)
        self._append_records()
        waited += _timed(syncfs, root)
        self._write_markers()
        # If that last sync fails, the batch is cut back and written again from its redelivery: the same bytes
        # (the encoding is deterministic), so a digest that reached the disk still describes them.
        self.digests, _ = self._seal(durable=False)
        if self.plan.markers or self.digests:
            try:
                waited += _timed(syncfs, root)
            except OSError:
                undo_seals(root, self.digests)  # a digest of records that are being cut back
                raise
        return waited

    def _write_json_views(self, *, synced: bool) -> None:
        """Temp file, then rename: a reader or a crash sees the old view or the new one, never a mix."""
        jobs: list[Callable[[], None]] = []
        write = write_synced if synced else write_file
        self._create_task_dirs({(task_id,) for task_id, _name, _content in self.plan.views})
        for task_id, name, content in self.plan.views:
            dir_fd = self._ensure_dir((task_id,))
            jobs.append(partial(_replace_file, write, dir_fd, name, content))
            self.sync_dirs.add((task_id,))
        self.jobs.run_all(jobs)

    def _append_records(self) -> None:
        """One write per touched file (syncfs makes them durable)."""
        jobs: list[Callable[[], None]] = []
        write = write_file
        self._create_task_dirs({key for key, *_rest in self.plan.appends if len(key) == 1})
        for key, name, exists, _size, data in self.plan.appends:
            if not exists:
                self.sync_dirs.add(key)  # the new file's directory entry must be durable too
            jobs.append(partial(write, self._ensure_dir(key), name, APPEND_FLAGS, data))
        self.jobs.run_all(jobs)

    def _append_records_synced(self) -> None:
        """Per-file sync: write every file, then fsync the files and every directory that gained or lost an entry
        (new files, renamed views, created directories, removed buffers) all at once, so that one journal commit
        serves them all instead of one for the files and another for the directories."""
        self._create_task_dirs({key for key, *_rest in self.plan.appends if len(key) == 1})
        opened: list[int] = []
        jobs: list[Callable[[], None]] = []
        for key, name, exists, _size, data in self.plan.appends:
            if not exists:
                self.sync_dirs.add(key)  # the new file's directory entry must be durable too
            jobs.append(partial(append_kept_open, self._ensure_dir(key), name, data, opened))
        appended = {(key, name) for key, name, *_rest in self.plan.appends}
        for key, name in self.plan.recovered:
            if (key, name) not in appended:  # read from disk and relied upon, not written to: made durable too
                self.sync_dirs.add(key)
                jobs.append(partial(_open_existing, self._ensure_dir(key), name, opened))
        try:
            self.jobs.run_all(jobs)
            dirs, self.sync_dirs = self.sync_dirs | self.writer.removed_dirs, set()
            self.jobs.run_all([partial(os.fsync, fd) for fd in [*opened, *self._fds_of(dirs)]])
        finally:
            for fd in opened:
                os.close(fd)

    def _write_markers(self) -> None:
        """Webhook -> task mappings, made only once the records they route are durable: a mapping that outlived a
        failed batch would send the next step straight to the task, ahead of the steps still buffered.

        Each is a symlink whose text is the task id: one atomic create, no content to fsync, made durable by the
        directory sync. It is only ever read with readlink, never followed. The first mapping wins."""
        jobs: list[Callable[[], None]] = []
        for webhook_id, task_id in self.plan.markers:
            key = webhook_dir(webhook_id)
            jobs.append(partial(_make_marker, task_id, f"{webhook_id}.task", self._ensure_dir(key)))
            self.sync_dirs.add(key)
        self.jobs.run_all(jobs)

    def _create_task_dirs(self, keys: set[DirKey]) -> None:
        """Create (or open) the task directories not opened yet, in parallel on the pool: a directory is an inode
        to allocate, as costly as a file, and a batch starts dozens of tasks."""
        writer = self.writer
        missing = sorted(key for key in keys if key not in self.dir_fds)
        if len(missing) < 2:
            return  # _ensure_dir opens it inline
        opened: dict[DirKey, tuple[int, bool] | OSError] = {}

        def open_one(key: DirKey) -> None:
            try:
                opened[key] = open_dir(key[0], dir_fd=writer.root_fd, create=key not in writer.known_dirs)
            except OSError as exc:
                opened[key] = exc  # _ensure_dir retries it inline and raises what it must

        self.jobs.run_all([partial(open_one, key) for key in missing])
        for key, outcome in opened.items():
            if isinstance(outcome, OSError):
                continue
            fd, created = outcome
            self.dir_fds[key] = fd
            writer.remember_dir(key)
            if created:
                self.sync_dirs.add(())

    def _ensure_dir(self, key: DirKey) -> int:
        """An fd for directory ``key``, created (with its parents) if missing; cached for the plan."""
        if key in self.dir_fds:
            return self.dir_fds[key]
        writer = self.writer
        parent = writer.root_fd
        for depth in range(1, len(key) + 1):
            sub = key[:depth]
            if sub in self.dir_fds:
                parent = self.dir_fds[sub]
                continue
            try:
                fd, created = open_dir(sub[-1], dir_fd=parent, create=sub not in writer.known_dirs)
            except FileNotFoundError:
                writer.known_dirs.discard(sub)  # removed behind our back: create it again
                fd, created = open_dir(sub[-1], dir_fd=parent, create=True)
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP):  # a file or a symlink where a directory belongs
                    raise BadEntry("task_directory_unsafe", f"{'/'.join(sub)} is not a plain directory") from None
                raise
            writer.remember_dir(sub)
            self.dir_fds[sub] = fd
            if created:
                self.sync_dirs.add(sub[:-1])
            parent = fd
        return parent

    def _fds_of(self, keys: set[DirKey]) -> list[int]:
        return [self.writer.root_fd if not key else self._ensure_dir(key) for key in keys]

    def _unlink_adopted(self) -> None:
        dirs: set[DirKey] = set()
        for key, name in self.plan.unlinks:
            try:
                dir_fd = self._ensure_dir(key)
                os.unlink(name, dir_fd=dir_fd)
                dirs.add(key)
            except FileNotFoundError:
                pass
        # Clean-up, not part of what is acknowledged: the next batch's durable step covers these directories
        # (a removal lost to a power cut leaves a buffer whose steps are already in their task; nothing reads it).
        self.writer.removed_dirs |= dirs

    def _undo_appends(self) -> None:
        """Best effort: cut every file this plan appended to back to its committed size."""
        for key, name, exists, size, _data in self.plan.appends:
            dir_fd = self.dir_fds.get(key)
            if dir_fd is None:
                continue
            try:
                if not exists:
                    os.unlink(name, dir_fd=dir_fd)
                    continue
                truncate_synced(dir_fd, name, size)
            except OSError:
                pass  # the next batch's recovery cuts any partial tail and the dedup skips what is complete


def webhook_dir(webhook_id: str) -> DirKey:
    """The reserved directory of a webhook id's buffer and mapping: sharded so no directory grows past a few
    thousand files."""
    shard = hashlib.sha1(webhook_id.encode()).hexdigest()[:2]
    return (STATE_DIR_NAME, WEBHOOKS_DIR, shard)


def _replace_file(write: Callable[[int, str, int, bytes], None], dir_fd: int, name: str, content: bytes) -> None:
    """Temp file then rename: a reader or a crash sees the old view or the new one, never a mix. With per-file
    sync, the temp file is fsynced before the rename publishes it; the directory sync makes the rename durable."""
    write(dir_fd, f".{name}.tmp", CREATE_FLAGS, content)
    os.rename(f".{name}.tmp", name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def _open_existing(dir_fd: int, name: str, opened: list[int]) -> None:
    with contextlib.suppress(FileNotFoundError):  # a buffer moved into its task since: nothing to make durable
        opened.append(os.open(name, READ_FLAGS, dir_fd=dir_fd))


def _make_marker(task_id: str, name: str, dir_fd: int) -> None:
    with contextlib.suppress(FileExistsError):  # the first mapping wins
        os.symlink(task_id, name, dir_fd=dir_fd)


def _timed(fn: Callable[[int], None], arg: int) -> float:
    started = time.perf_counter()
    fn(arg)
    return time.perf_counter() - started


def view_bytes(doc: dict[str, Any]) -> bytes:
    """A JSON view's bytes on disk (indented for people who open the file)."""
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"


# -- the pipe between the store and the child ---------------------------------------------------------------------


def _send(fd: int, obj: Any, shared: mmap.mmap | None = None) -> None:
    """Send ``obj`` on the pipe ``fd``; through ``shared`` memory (the pipe then carries only its length) when it
    fits: copying a batch's megabytes there never waits for the reader, where a full pipe would."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    if shared is not None and len(data) <= len(shared):
        shared[: len(data)] = data
        write_all(fd, _HEADER.pack(_SHARED, len(data)))
        return
    write_all(fd, _HEADER.pack(_INLINE, len(data)) + data)


def _recv(fd: int, shared: mmap.mmap | None = None) -> Any:
    """The next message, or raise EOFError when the other side closed the pipe."""
    kind, size = _HEADER.unpack(_read_exactly(fd, _HEADER.size))
    if kind == _SHARED:
        assert shared is not None, "a message in shared memory, and none was mapped"
        data = shared[:size]
    else:
        data = _read_exactly(fd, size)
    return pickle.loads(data)  # only ever the store and its own child at either end


def _read_exactly(fd: int, size: int) -> bytes:
    chunks = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise EOFError("the writer pipe closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


class WriterProcess:
    """The store's side of the child: starts it, sends it plans one at a time, restarts it if it died."""

    def __init__(
        self,
        root: Path,
        *,
        sync_mode: SyncMode,
        fs_sync: bool,
        fsync_threads: int,
        log_level: str = "INFO",
        log_format: str = "console",
    ) -> None:
        self.root = root
        self.args = [
            "--sync-mode", sync_mode, "--fsync-threads", str(fsync_threads), "--log-level", log_level,
            "--log-format", log_format, *(["--fs-sync"] if fs_sync else []),
        ]  # fmt: skip
        self._lock = threading.Lock()
        self._child: _Child | None = None
        #: The child writing the plan last sent, until its outcome is received.
        self._awaiting: _Child | None = None
        self._spawner = _Spawner()
        # A store dropped without close() still stops its child (and closes the pipes) when collected.
        weakref.finalize(self, self._spawner.stop)

    def start(self) -> None:
        """Start the child now rather than at the first plan."""
        with self._lock:
            if self._child is None or not self._child.alive():
                self._start()

    def _start(self) -> _Child:
        command = [sys.executable, "-m", "tasklogger.writer", str(self.root), "--parent", str(os.getpid())]
        self._child = self._spawner.spawn([*command, *self.args])
        return self._child

    def send(self, plan: Plan) -> None:
        """Hand ``plan`` to the child, which starts writing it; one plan at a time (``receive`` its outcome)."""
        with self._lock:
            assert self._awaiting is None, "the previous plan's outcome was not received"
            child = self._child
            if child is None or not child.alive():
                if child is not None:
                    log.error("the writer process had died; starting a new one", returncode=child.process.returncode)
                    self._spawner.retire(child)
                child = self._start()
            try:
                _send(child.inbox, plan, child.shared)
            except OSError as exc:
                self._failed(child)
                raise WriterProcessFailed(f"the writer process failed: {exc}") from None
            self._awaiting = child

    def receive(self) -> Outcome:
        """The outcome of the plan ``send`` handed over (blocks until the child has written it)."""
        with self._lock:
            child, self._awaiting = self._awaiting, None
            assert child is not None, "no plan was sent"
            try:
                outcome: Outcome = _recv(child.outbox)
            except Exception as exc:  # no answer, or not one we can read: the pipe is out of step, never reused
                self._failed(child)
                raise WriterProcessFailed(f"the writer process failed: {exc!r}") from None
            return outcome

    def _failed(self, child: _Child) -> None:
        """A child that could not take or answer a plan is stopped; the next plan starts a new one."""
        self._spawner.retire(child)
        if self._child is child:
            self._child = None

    def close(self) -> None:
        """Close the child's stdin (it exits), wait for it, and end the spawning thread."""
        with self._lock:
            self._spawner.stop()
            self._child = self._awaiting = None


class _Spawner:
    """Starts and stops the writer children from one thread of its own.

    The kernel sends a child its parent-death signal when the *thread* that forked it ends, not the process. A
    child restarted from the consumer's thread would die with that thread; forked by this thread, which lives as
    long as the store, it dies with the process."""

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[tuple[list[str], Future[_Child]] | None] = queue.SimpleQueue()
        self._children: list[_Child] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="writer-spawner", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (request := self._requests.get()) is not None:
            command, future = request
            try:
                future.set_result(_Child(command))
            except BaseException as exc:  # e.g. no more processes: the caller's write fails with it
                future.set_exception(exc)

    def spawn(self, command: list[str]) -> _Child:
        """A new child running ``command``, forked by the spawning thread."""
        future: Future[_Child] = Future()
        self._requests.put((command, future))
        child = future.result()
        with self._lock:
            self._children.append(child)
        return child

    def retire(self, child: _Child) -> None:
        """Stop ``child`` and forget it."""
        child.stop()
        with self._lock:
            if child in self._children:
                self._children.remove(child)

    def stop(self) -> None:
        """Stop every child, then the thread (idempotent)."""
        with self._lock:
            children, self._children = self._children, []
        for child in children:
            child.stop()
        if self._thread.is_alive():
            self._requests.put(None)
            self._thread.join(5)


class _Child:
    """A started writer child, our ends of its two pipes (raw descriptors) and the memory plans are sent in."""

    def __init__(self, command: list[str]) -> None:
        self.shared_fd = self.inbox = self.outbox = -1
        self.shared: mmap.mmap | None = None
        child_ends: list[int] = []
        try:
            self.shared_fd = os.memfd_create("tasklogger-plans", os.MFD_CLOEXEC)
            os.ftruncate(self.shared_fd, SHARED_BYTES)
            self.shared = mmap.mmap(self.shared_fd, SHARED_BYTES)
            child_in, self.inbox = os.pipe()
            child_ends.append(child_in)
            self.outbox, child_out = os.pipe()
            child_ends.append(child_out)
            self.process = subprocess.Popen(
                [*command, "--shared-fd", str(self.shared_fd)],
                stdin=child_in, stdout=child_out, close_fds=True, pass_fds=(self.shared_fd,),
            )  # fmt: skip
        except BaseException:  # no child (fork failed: EAGAIN, ENOMEM): nothing may leak, the next plan retries
            self._release()
            raise
        finally:
            for fd in child_ends:
                os.close(fd)
        for fd in (self.inbox, self.outbox):
            os.set_inheritable(fd, False)

    def alive(self) -> bool:
        return self.inbox >= 0 and self.process.poll() is None

    def stop(self) -> None:
        """Close our ends (the child reads EOF and exits), reap it, and unmap the shared memory."""
        self._close_fds()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._release()

    def _close_fds(self) -> None:
        for fd in (self.inbox, self.outbox, self.shared_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.inbox = self.outbox = self.shared_fd = -1

    def _release(self) -> None:
        self._close_fds()
        if self.shared is not None:
            self.shared.close()
            self.shared = None


# -- the child ----------------------------------------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(1)


def _text_of(exc: OSError) -> str:
    """``exc`` without its ``[Errno N]`` prefix (the store puts the errno back)."""
    text = exc.strerror or str(exc)
    return f"{text}: {exc.filename!r}" if exc.filename is not None else text


def serve(writer: PlanWriter, inbox: int, outbox: int, shared: mmap.mmap | None = None) -> None:
    """Write each plan read from ``inbox`` (or ``shared``) and answer with its Outcome on ``outbox``, until
    ``inbox`` closes."""
    while True:
        try:
            plan: Plan = _recv(inbox, shared)
        except EOFError:
            return
        try:
            outcome = writer.write(plan)
        except OSError as exc:
            outcome = Outcome(error=("os", exc.errno or errno.EIO, _text_of(exc)))
        except BadEntry as exc:
            outcome = Outcome(error=("bad_entry", exc.reason, exc.detail))
        except Exception as exc:  # a defect: the store fails the batch; its entries are retried one by one
            log.exception("writing a batch failed")
            outcome = Outcome(error=("defect", 0, repr(exc)))
        _send(outbox, outcome)


def main(argv: list[str] | None = None) -> None:
    """``python -m tasklogger.writer LOGS_DIR --parent PID ...``: the store's writer child."""
    parser = argparse.ArgumentParser(prog="tasklogger.writer")
    parser.add_argument("root", type=Path)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--sync-mode", choices=["auto", "fs", "file"], default="auto")
    parser.add_argument("--fs-sync", action="store_true")
    parser.add_argument("--fsync-threads", type=int, default=8)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", default="console")
    parser.add_argument("--shared-fd", type=int, default=None, help="memfd the store hands plans over in")
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    # A Ctrl-C (or a stop signal sent to the whole group) is the service's to handle: it finishes the batch in
    # hand, then closes our stdin; and if it dies, the kernel kills us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from .logs import configure_on_first_use

    configure_on_first_use(args.log_level, args.log_format)
    writer = PlanWriter(args.root, sync_mode=args.sync_mode, fs_sync=args.fs_sync, fsync_threads=args.fsync_threads)
    shared = mmap.mmap(args.shared_fd, 0) if args.shared_fd is not None else None
    from .gcpolicy import tune

    tune()
    try:
        serve(writer, sys.stdin.fileno(), sys.stdout.fileno(), shared)
    finally:
        writer.close()


if __name__ == "__main__":
    # Run the imported module's main, not this ``__main__`` copy: the plans and outcomes that cross the pipe must
    # be tasklogger.writer's classes on both sides.
    from tasklogger.writer import main as writer_main

    writer_main()

"""Sealed task digests: the record format, computing a task's digest from its directory, and sealing inside a commit.

A digest is a record of ``{task}/05-digests.jsonl``, chained like every JSONL file, so a reseal is one more line
and history is never edited. Members (``seq`` first, ``hash`` last, ``key_id``/``signature`` before it if signed)::

    seq, id (the task's highest stream id), type "tasklogger:digest", task_id, sealed_at, prev_digest,
    stream_ids {first, last}, files {name: {sha256, size[, records, head]}}

``files`` lists every file of the task but the digest file itself: SHA-256 and size, and for a JSONL file its
record count and chain head.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from .. import records
from ..fsio import (
    APPEND_FLAGS,
    DIR_FLAGS,
    Syncer,
    append_kept_open,
    end_of_whole_lines,
    exists_at,
    read_file,
    syncfs,
    truncate_synced,
    write_file,
)
from ..logs import get_logger
from ..projector import FINAL_RESULT, JSONL_FILES, TASK_FILES
from .chain import last_line

if TYPE_CHECKING:
    from .signing import Signer  # cryptography is loaded only when a key is configured

log = get_logger(__name__)

DIGESTS = "05-digests.jsonl"
DIGEST_TYPE = "tasklogger:digest"


def now_iso() -> str:
    """The current time as ISO 8601 UTC with microseconds."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def file_entry(name: str, content: bytes) -> tuple[dict[str, Any], list[str]]:
    """A file's entry in a digest, and its lowest and highest stream ids (JSONL files with records only)."""
    entry: dict[str, Any] = {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}
    if not name.endswith(".jsonl"):
        return entry, []
    entry.update(records=0, head=None)
    end = content.rfind(b"\n") + 1  # whole lines only (no copy of the file: offsets)
    if not end:
        return entry, []
    try:
        record = records.parse_line(content[content.rfind(b"\n", 0, end - 1) + 1 : end])
    except records.RecordError:
        entry.update(records=None)  # damage the verifier reports; sealing must not stop the consumer
        return entry, _record_ids(content[:end])
    entry.update(records=record.seq, head=record.hash.hex())
    if content.find(_LATE, 0, end) >= 0:
        return entry, _record_ids(content[:end])  # a record appended out of order may be the lowest: look at all
    # In stream order the first line holds the lowest id and the last line the highest (or names it as max_id).
    ids = [*_record_ids(content[: content.find(b"\n") + 1]), record.entry_id]
    carried = record.body.get("max_id")
    return entry, [*ids, carried] if isinstance(carried, str) else ids


_LATE = b',"max_id":"'


def _record_ids(content: bytes) -> list[str]:
    """The stream id of every whole line (a record starts ``{"seq":N,"id":"...``), from each line's first bytes."""
    ids = []
    start = 0
    while (end := content.find(b"\n", start)) >= 0:
        head = content[start : min(end, start + 80)]
        at = head.find(b',"id":"')
        if at >= 0 and (close := head.find(b'"', at + 7)) >= 0:
            ids.append(head[at + 7 : close].decode())
        start = end + 1
    return ids


def task_files(dir_fd: int) -> tuple[dict[str, dict[str, Any]], dict[str, str] | None]:
    """Every file of a task directory (opened relative to ``dir_fd``, never through a symlink): its digest entries
    and the task's stream id range (None when the task has no record yet)."""
    files: dict[str, dict[str, Any]] = {}
    ids: list[str] = []
    for name in TASK_FILES:
        content = read_file(dir_fd, name)
        if content is None:
            continue
        files[name], found = file_entry(name, content)
        ids.extend(found)
    keys = []
    for entry_id in ids:
        try:
            keys.append((records.stream_id_key(entry_id), entry_id))
        except ValueError:
            continue  # not a stream id: damage the verifier reports
    if not keys:
        return files, None
    return files, {"first": min(keys)[1], "last": max(keys)[1]}


def digest_body(
    task_id: str, files: dict[str, dict[str, Any]], stream_ids: dict[str, str] | None, prev: bytes | None
) -> dict[str, Any]:
    """A digest record's members between ``seq`` and the signature."""
    return {
        "id": stream_ids["last"] if stream_ids else "0-0",
        "type": DIGEST_TYPE,
        "task_id": task_id,
        "sealed_at": now_iso(),
        "prev_digest": prev.hex() if prev is not None else None,
        "stream_ids": stream_ids,
        "files": files,
    }


@dataclass(frozen=True, slots=True)
class Sealed:
    """A digest a commit wrote: the digest file and its head afterwards (for the checkpoint chain)."""

    relpath: str
    seq: int
    hash: bytes
    size: int
    max_key: tuple[int, int]
    max_id: str
    #: The digest file's size before this digest (where a failed commit cuts it back to).
    start: int = 0

    def __reduce__(self) -> tuple[type[Sealed], tuple[Any, ...]]:
        # Crosses the writer pipe with every batch: the default for a frozen, slotted dataclass unpickles through
        # dataclasses.fields() and costs several times more.
        return Sealed, (self.relpath, self.seq, self.hash, self.size, self.max_key, self.max_id, self.start)


def seal_batch(
    root_fd: int,
    task_ids: Iterable[str],
    signer: Signer | None,
    syncer: Syncer,
    *,
    batch_syncfs: bool,
    durable: bool = True,
) -> tuple[list[Sealed], float]:
    """Seal (or reseal) every task in ``task_ids`` (all a batch touched, duplicates included) whose final result
    exists and whose files differ from its last digest; the digests are durable when this returns (with
    ``durable=False``, syncfs batches only, the caller's next syncfs, which also covers the webhook mappings, makes
    them durable). Returns them and the seconds spent waiting for the disk.

    Called by the commit once the batch's records and views are durable and before it is acknowledged: a crash
    before a digest is durable leaves the entry unacknowledged, and its redelivery (a skipped duplicate) still
    touches the task, so the seal is decided from the files on disk, never from "this batch wrote the end event".
    It reads only the disk (which holds exactly this batch's state: commits are written one at a time) and the
    digest files, which nothing else writes, so it may run while the next batch is being built.
    """
    planned: list[tuple[int, str, bytes, int, Sealed]] = []
    waited = 0.0
    try:
        for task_id in sorted(task_ids):
            plan = _plan(root_fd, task_id, signer)
            if plan is not None:
                planned.append(plan)
        if planned:
            started = time.perf_counter()
            _write_durably(root_fd, syncer, planned, durable=durable, batch_syncfs=batch_syncfs)
            waited = time.perf_counter() - started
    except BaseException:
        for dir_fd, _name, _line, size, _sealed in planned:
            with contextlib.suppress(OSError):  # best effort; a partial line left is cut before the next digest
                _truncate(dir_fd, size)
        raise
    finally:
        for dir_fd, *_rest in planned:
            os.close(dir_fd)
    return [sealed for *_rest, sealed in planned], waited


def _plan(root_fd: int, task_id: str, signer: Signer | None) -> tuple[int, str, bytes, int, Sealed] | None:
    """The digest line to append for a task, or None when it has not ended or its last digest still holds."""
    try:
        dir_fd = os.open(task_id, DIR_FLAGS, dir_fd=root_fd)
    except OSError:
        return None  # no directory (only dead letters or buffered steps) or not a plain one
    try:
        if not exists_at(dir_fd, FINAL_RESULT):
            os.close(dir_fd)
            return None
        try:
            size, seq, prev, previous = _digest_head(dir_fd, task_id)
        except records.RecordError as exc:
            # Damage or tampering: sealing on top of it would hide it, and failing would stop the consumer.
            log.error("last digest is damaged; task not resealed", task=task_id, error=str(exc))
            os.close(dir_fd)
            return None
        files, stream_ids = task_files(dir_fd)
        if previous is not None and previous.get("files") == files:
            os.close(dir_fd)
            return None
    except BaseException:
        os.close(dir_fd)
        raise
    body: dict[str, Any] = {"seq": seq + 1}
    body.update(digest_body(task_id, files, stream_ids, prev if seq else None))
    if signer is not None:
        body = signer.sign_body(body)
    line, digest = records.encode(body, prev)
    sealed = Sealed(f"{task_id}/{DIGESTS}", seq + 1, digest, size + len(line),
                    records.stream_id_key(body["id"]), body["id"], size)  # fmt: skip
    return dir_fd, task_id, line, size, sealed


def _digest_head(dir_fd: int, task_id: str) -> tuple[int, int, bytes, dict[str, Any] | None]:
    """The digest file's valid size, last seq and hash, and last digest; a partial line a crash left is cut."""
    try:
        fd = os.open(DIGESTS, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return 0, 0, records.genesis(f"{task_id}/{DIGESTS}"), None
    try:
        size = os.fstat(fd).st_size
        valid = end_of_whole_lines(fd, size)
        if valid != size:
            log.warning("cut partial digest line", task=task_id, size=size, kept=valid)
            os.ftruncate(fd, valid)
            os.fsync(fd)
    finally:
        os.close(fd)
    line = last_line(dir_fd, DIGESTS, valid)
    if line is None:
        return 0, 0, records.genesis(f"{task_id}/{DIGESTS}"), None
    record = records.parse_line(line)
    return valid, record.seq, record.hash, record.body


def _truncate(dir_fd: int, size: int) -> None:
    truncate_synced(dir_fd, DIGESTS, size)


def undo_seals(root_fd: int, sealed: list[Sealed]) -> None:
    """Best effort: cut digest files back to their size before ``sealed`` (their commit failed after writing them)."""
    for one in sealed:
        task_id = one.relpath.partition("/")[0]
        with contextlib.suppress(OSError):
            dir_fd = os.open(task_id, DIR_FLAGS, dir_fd=root_fd)
            try:
                _truncate(dir_fd, one.start)
            finally:
                os.close(dir_fd)


def _write_durably(
    root_fd: int,
    syncer: Syncer,
    planned: list[tuple[int, str, bytes, int, Sealed]],
    *,
    durable: bool,
    batch_syncfs: bool,
) -> None:
    if batch_syncfs:
        for dir_fd, _task, line, _size, _sealed in planned:
            write_file(dir_fd, DIGESTS, APPEND_FLAGS, line)
        if durable:
            syncfs(root_fd)  # one call covers the data and any new digest file's directory entry
        return
    # Write every digest, then fsync them and the directories of new digest files in one round (one journal
    # commit for all).
    opened: list[int] = []
    try:
        syncer.run_all([partial(append_kept_open, dir_fd, DIGESTS, line, opened) for dir_fd, _t, line, *_r in planned])
        new_dirs = [dir_fd for dir_fd, _task, _line, size, _sealed in planned if size == 0]
        syncer.fsync_all([*opened, *new_dirs])
    finally:
        for fd in opened:
            os.close(fd)


def jsonl_names() -> tuple[str, ...]:
    """The chained files of a task directory, the digest file included."""
    return (*JSONL_FILES, DIGESTS)

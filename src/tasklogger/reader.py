"""Read-only access to task directories for the API and the CLI; never opens anything for writing.

Every path is built from a validated task id and opened relative to the logs directory without following
symlinks, so no request can read outside it. The streaming readers (``stream_compat``, ``page``, ``Tail``) read
JSONL files in fixed-size chunks and pass each record's bytes through as they are on disk, so a task of any size
is served in constant memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from .fsio import DIR_FLAGS, open_file, read_file
from .projector import AGENT_OUTPUT, FINAL_RESULT, INPUT, METADATA, STATE_DIR_NAME, USER_INPUTS, WEBHOOK_FLOW
from .records import stream_id_key
from .wire import check_name

#: Bytes read per read() call when streaming a JSONL file.
CHUNK = 256 * 1024

#: The compat object of GET /tasks/{id}/logs: key -> file.
COMPAT_KEYS = {
    "metadata": METADATA,
    "input": INPUT,
    "webhook_flow": WEBHOOK_FLOW,
    "agent_output": AGENT_OUTPUT,
    "user_inputs": USER_INPUTS,
    "final_result": FINAL_RESULT,
}


class TaskNotFound(LookupError):
    """Raised when the logs directory has no directory for a (valid) task id."""


class TaskDir:
    """An open, validated task directory. Use as a context manager."""

    def __init__(self, logs_dir: Path, task_id: str) -> None:
        check_name(task_id)  # raises UnsafeTaskId before the id comes near a path
        self.task_id = task_id
        root = os.open(logs_dir, DIR_FLAGS & ~os.O_NOFOLLOW)
        try:
            self.fd = os.open(task_id, DIR_FLAGS, dir_fd=root)
        except (FileNotFoundError, NotADirectoryError):
            raise TaskNotFound(task_id) from None
        except OSError as exc:
            raise TaskNotFound(task_id) from exc  # a symlink (ELOOP) is treated as absent, never followed
        finally:
            os.close(root)

    def __enter__(self) -> TaskDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the directory (idempotent)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        # A streamed response that never started still releases its descriptor.
        if getattr(self, "fd", -1) >= 0:
            self.close()

    def json(self, name: str) -> dict[str, Any] | None:
        """A JSON view, or None when it does not exist yet."""
        raw = read_file(self.fd, name)
        if raw is None:
            return None
        doc = orjson.loads(raw)
        return doc if isinstance(doc, dict) else None

    def records(self, name: str) -> Iterator[dict[str, Any]]:
        """The records of a JSONL file in order; a partial last line (a write in progress) is not yielded."""
        fd = open_file(self.fd, name)
        if fd is None:
            return
        with os.fdopen(fd, "rb") as handle:
            for line in handle:
                if line.endswith(b"\n"):
                    yield orjson.loads(line)

    def compat(self) -> dict[str, Any]:
        """The object GET /tasks/{id}/logs has always returned."""
        out: dict[str, Any] = {}
        for key, name in COMPAT_KEYS.items():
            out[key] = self.json(name) if name.endswith(".json") else list(self.records(name))
        return out


def task_exists(logs_dir: Path, task_id: str) -> bool:
    """Whether a valid task id has a directory."""
    try:
        with TaskDir(logs_dir, task_id):
            return True
    except TaskNotFound:
        return False


#: The JSONL files of a task by compat key.
JSONL_KEYS = {"webhook_flow": WEBHOOK_FLOW, "agent_output": AGENT_OUTPUT, "user_inputs": USER_INPUTS}


def lines(fd: int, start: int = 0) -> Iterator[tuple[int, bytes]]:
    """The complete lines of an open file from byte ``start``: (offset after the line, line without newline).

    Reads CHUNK bytes at a time; a partial last line (a write in progress) is not yielded.
    """
    os.lseek(fd, start, os.SEEK_SET)
    pending = b""
    position = start
    while chunk := os.read(fd, CHUNK):
        pending += chunk
        begin = 0
        while (end := pending.find(b"\n", begin)) >= 0:
            position += end + 1 - begin
            yield position, pending[begin:end]
            begin = end + 1
        pending = pending[begin:]


def record_id(line: bytes) -> str | None:
    """The stream id of a record line, or None when the line is not a record (it is then never served)."""
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    entry_id = rec.get("id") if isinstance(rec, dict) else None
    return entry_id if isinstance(entry_id, str) else None


def stream_compat(task: TaskDir, keys: list[str]) -> Iterator[bytes]:
    """The compat object of ``keys``, as chunks of JSON: records are copied as they are on disk, never held
    all at once. Closes ``task`` when done."""
    try:
        out = bytearray(b"{")
        for n, key in enumerate(keys):
            name = COMPAT_KEYS[key]
            out += (b"," if n else b"") + orjson.dumps(key) + b":"
            if name.endswith(".json"):
                out += orjson.dumps(task.json(name))
                continue
            out += b"["
            fd = open_file(task.fd, name)
            if fd is not None:
                try:
                    first = True
                    for _, line in lines(fd):
                        if record_id(line) is None:
                            continue
                        out += line if first else b"," + line
                        first = False
                        if len(out) >= CHUNK:
                            yield bytes(out)
                            out.clear()
                finally:
                    os.close(fd)
            out += b"]"
            yield bytes(out)
            out.clear()
        out += b"}"
        yield bytes(out)
    finally:
        task.close()


def page(
    dir_fd: int, name: str, after: str | None, limit: int, match: Callable[[dict[str, Any]], bool] | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """Up to ``limit`` records of a JSONL file that come after the record ``after``, and the id to continue from.

    "After" is the file's order: the records following the line whose id is ``after``, so that a record appended
    out of stream order (it carries ``max_id``) is neither skipped nor repeated. An ``after`` that is not in the
    file continues after the records whose ids are not greater. ``next_after`` is None on the last page.
    ``match`` keeps only some records (the others still advance the position).
    """
    fd = open_file(dir_fd, name)
    if fd is None:
        return [], None
    try:
        start = 0
        if after is not None:
            start = _offset_after(fd, after)
        out: list[dict[str, Any]] = []
        for _, line in lines(fd, start):
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
                continue
            if match is not None and not match(rec):
                continue
            if len(out) == limit:
                return out, out[-1]["id"]
            out.append(rec)
        return out, None
    finally:
        os.close(fd)


def _offset_after(fd: int, after: str) -> int:
    """Where reading resumes after the record ``after``: just past its line, or (when absent) past the last
    line whose id is not greater, looking only at the id member at the start of each line (no JSON parsing)."""
    needle = b'"id":' + orjson.dumps(after) + b","
    try:
        after_key = stream_id_key(after)
    except ValueError:
        after_key = None
    fallback = 0
    for end, line in lines(fd):
        head = line[:200]
        if needle in head:
            return end
        if after_key is not None:
            entry_id = record_id(line)
            if entry_id is not None and _key(entry_id) <= after_key:
                fallback = end
    return fallback


def _key(entry_id: str) -> tuple[int, int]:
    try:
        return stream_id_key(entry_id)
    except ValueError:
        return (-1, -1)


class Tail:
    """Follows the JSONL files of a task: each call of ``new_records`` returns what was appended since the last,
    in stream-id order across the files. Used by the SSE endpoint."""

    def __init__(self, task: TaskDir) -> None:
        self.task = task
        self.offsets = dict.fromkeys(JSONL_KEYS, 0)
        #: Records read but held back because another file has not been read as far yet.
        self._held: list[tuple[tuple[int, int], str, str, bytes]] = []
        #: Highest stream id read so far (from any file).
        self.max_key: tuple[int, int] = (-1, -1)

    def new_records(self, limit_bytes: int = 4 * CHUNK) -> list[tuple[tuple[int, int], str, str, bytes]]:
        """(id key, id, file key, line) of the records appended since the last call, sorted by stream id.

        Reads at most about ``limit_bytes`` per file per call, so a huge backlog is sent in pieces; records
        beyond what every cut-short file has reached are held for the next call, to keep the merged order.
        """
        found = self._held
        horizon: tuple[int, int] | None = None
        for key, name in JSONL_KEYS.items():
            fd = open_file(self.task.fd, name)
            if fd is None:
                continue
            try:
                start = self.offsets[key]
                last: tuple[int, int] | None = None
                for end, line in lines(fd, start):
                    self.offsets[key] = end
                    entry_id = record_id(line)
                    if entry_id is not None:
                        last = _key(entry_id)
                        found.append((last, entry_id, key, line))
                        self.max_key = max(self.max_key, last)
                    if end - start >= limit_bytes:
                        if last is not None and (horizon is None or last < horizon):
                            horizon = last
                        break
            finally:
                os.close(fd)
        found.sort(key=lambda item: item[0])
        if horizon is None:
            self._held = []
            return found
        cut = next((n for n, item in enumerate(found) if item[0] > horizon), len(found))
        self._held = found[cut:]
        return found[:cut]

    @property
    def holding(self) -> bool:
        """Whether records are held back for the next call (more to send without waiting)."""
        return bool(self._held)


def open_state_dir(logs_dir: Path) -> int:
    """A read-only fd of the service's reserved directory (``.tasklogger``), never through a symlink.

    Raises FileNotFoundError when it does not exist (nothing was consumed yet).
    """
    root = os.open(logs_dir, DIR_FLAGS & ~os.O_NOFOLLOW)
    try:
        return os.open(STATE_DIR_NAME, DIR_FLAGS, dir_fd=root)
    except OSError as exc:
        raise FileNotFoundError(STATE_DIR_NAME) from exc
    finally:
        os.close(root)

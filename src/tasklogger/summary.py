"""What the index knows about one task, built incrementally from its files.

``TaskRow`` holds the summary (who, what, status, cost, counts) plus, per JSONL file, the byte offset up to which
the file has been read, so that each record is parsed once however often the task is touched. ``scan`` reads only
what was appended since, and the JSON views only when their size or mtime changed. A file that shrank (a damaged
line cut by recovery) makes the caller start the task over from nothing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from .fsio import open_file, read_file
from .projector import AGENT_OUTPUT, FINAL_RESULT, INPUT, METADATA, USER_INPUTS, WEBHOOK_FLOW, to_number
from .reader import TaskDir
from .records import stream_id_key
from .wire import parse_timestamp

#: Characters of the input message kept in a summary.
MESSAGE_CHARS = 300
#: Text of one record given to full-text search at most (a 200 KB tool result is searchable by its start).
MAX_TEXT_PER_RECORD = 16 * 1024
#: Agent output text of one task given to search at most: beyond, a 100 MB task would make the index as large
#: as the logs. The input message, errors and the final result are always searchable.
MAX_TEXT_PER_TASK = 4 * 1024 * 1024
#: Bytes read from a JSONL file per read() call.
CHUNK = 1 << 20
#: SQLite integers are signed 64-bit; a larger number is reported as unknown rather than wrapped.
_INT_MAX = 2**63 - 1

JSONL_KEYS = {WEBHOOK_FLOW: "webhook_flow", AGENT_OUTPUT: "agent_output", USER_INPUTS: "user_inputs"}
VIEWS = (METADATA, INPUT, FINAL_RESULT)


@dataclass
class TaskRow:
    """The indexed summary of one task and how far its files have been read."""

    task_id: str
    source: str | None = None
    agent_type: str | None = None
    user_id: str | None = None
    machine_id: str | None = None
    status: str = "running"
    created_ts: float | None = None
    updated_ts: float | None = None
    finished_ts: float | None = None
    duration_seconds: float | None = None
    cost_usd: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    exit_code: int | None = None
    error: str | None = None
    message: str | None = None
    webhook_flow: int = 0
    agent_output: int = 0
    user_inputs: int = 0
    first_entry_id: str | None = None
    last_entry_id: str | None = None
    #: JSONL file -> bytes consumed; JSON view -> (size, mtime_ns) last read.
    offsets: dict[str, int] = field(default_factory=dict)
    stamps: dict[str, list[int]] = field(default_factory=dict)
    #: Earliest record time, used as created_at while metadata.json does not exist.
    first_record_ts: float | None = None
    #: Characters of agent output text given to search so far (capped at MAX_TEXT_PER_TASK).
    text_chars: int = 0
    #: Sort keys of first/last_entry_id, computed when first needed (not stored).
    first_key: tuple[int, int] | None = field(default=None, repr=False, compare=False)
    last_key: tuple[int, int] | None = field(default=None, repr=False, compare=False)

    @property
    def total(self) -> int:
        """All records of the task."""
        return self.webhook_flow + self.agent_output + self.user_inputs


class Shrunk(Exception):
    """A file is shorter than what was already read: the task must be read again from the start."""


def scan(task: TaskDir, row: TaskRow) -> list[str]:
    """Bring ``row`` up to date with ``task``'s files; returns the new searchable text. Raises Shrunk."""
    texts: list[str] = []
    for name, key in JSONL_KEYS.items():
        _scan_jsonl(task, row, name, key, texts)
    views_changed = False
    for name in VIEWS:
        views_changed |= _view_changed(task, row, name)
    if views_changed:
        _apply_views(task, row, texts)
    if row.created_ts is None:
        row.created_ts = row.first_record_ts
    if row.finished_ts is not None and row.duration_seconds is None and row.created_ts is not None:
        row.duration_seconds = round(max(0.0, row.finished_ts - row.created_ts), 3)
    return texts


def _scan_jsonl(task: TaskDir, row: TaskRow, name: str, key: str, texts: list[str]) -> None:
    fd = open_file(task.fd, name)
    if fd is None:
        if row.offsets.get(name):
            raise Shrunk(name)
        return
    try:
        size = os.fstat(fd).st_size
        start = row.offsets.get(name, 0)
        if size < start:
            raise Shrunk(name)
        if size == start:
            return
        os.lseek(fd, start, os.SEEK_SET)
        pending = b""
        consumed = start
        while chunk := os.read(fd, CHUNK):
            pending += chunk
            cut = pending.rfind(b"\n")
            if cut < 0:
                continue
            lines, pending = pending[: cut + 1], pending[cut + 1 :]
            consumed += len(lines)
            for line in lines.splitlines():
                _record(row, key, line, texts)
        # A partial last line is a write in progress: it is read next time, complete.
        row.offsets[name] = consumed
    finally:
        os.close(fd)


#: The members every record starts with (docs/records.md: seq, id, type, ts in this order), read without
#: parsing the whole line: most records (thinking, raw output, webhook payloads) add nothing else to a summary.
_HEAD = re.compile(rb'\{"seq":[0-9]+,"id":("(?:[^"\\]|\\.)*"),"type":("(?:[^"\\]|\\.)*"),"ts":("(?:[^"\\]|\\.)*")')
#: Event types whose data a summary or the search uses.
DATA_TYPES = frozenset({"task:output", "task:tool_call", "task:tool_result", "task:failed", "task:metrics"})


def _record(row: TaskRow, key: str, line: bytes, texts: list[str]) -> None:
    head = _HEAD.match(line)
    try:
        if head is not None:
            entry_id, event_type, ts = (orjson.loads(head.group(n)) for n in (1, 2, 3))
            rec = orjson.loads(line) if event_type in DATA_TYPES else None
        else:
            rec = orjson.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
                return
            entry_id, event_type, ts = rec["id"], str(rec.get("type", "")), rec.get("ts")
    except orjson.JSONDecodeError:
        return  # recovery quarantines such a line; it is not a record
    setattr(row, key, getattr(row, key) + 1)
    _ids(row, entry_id)
    moment = parse_time(ts)
    if moment is None and _ID.fullmatch(entry_id):
        moment = stream_id_key(entry_id)[0] / 1000  # a ts that does not parse: the entry id's time
    if moment is not None:
        row.updated_ts = moment if row.updated_ts is None else max(row.updated_ts, moment)
        row.first_record_ts = moment if row.first_record_ts is None else min(row.first_record_ts, moment)
    data = rec.get("data") if isinstance(rec, dict) else None
    if isinstance(data, dict):
        _record_data(row, event_type, data, texts)


_ID = re.compile(r"[0-9]+-[0-9]+", re.ASCII)


def _ids(row: TaskRow, entry_id: str) -> None:
    """Keep the lowest and highest stream ids (their sort keys are cached on the row)."""
    if not _ID.fullmatch(entry_id):
        return
    entry_key = stream_id_key(entry_id)
    if row.first_key is None and row.first_entry_id is not None:
        row.first_key = stream_id_key(row.first_entry_id)
    if row.last_key is None and row.last_entry_id is not None:
        row.last_key = stream_id_key(row.last_entry_id)
    if row.first_key is None or entry_key < row.first_key:
        row.first_entry_id, row.first_key = entry_id, entry_key
    if row.last_key is None or entry_key > row.last_key:
        row.last_entry_id, row.last_key = entry_id, entry_key


def _record_data(row: TaskRow, event_type: str, data: dict[str, Any], texts: list[str]) -> None:
    if event_type == "task:output":
        _budgeted(row, data.get("content"), texts)
    elif event_type == "task:tool_call":
        _text_of(data.get("name"), texts)
    elif event_type == "task:tool_result":
        _text_of(data.get("name"), texts)
        if data.get("is_error") in (True, "true", "True", 1):
            _budgeted(row, data.get("content"), texts)
    elif event_type == "task:failed":
        _text_of(data.get("error"), texts)
    elif event_type == "task:metrics" and row.finished_ts is None:
        # Running figures until the final result gives the definitive ones.
        cost = _number(_first(data, "cost_usd", "total_cost_usd", "cost"), float)
        row.cost_usd = cost if cost is not None else row.cost_usd
        tokens_in = _number(data.get("input_tokens"), int)
        row.input_tokens = tokens_in if tokens_in is not None else row.input_tokens
        tokens_out = _number(data.get("output_tokens"), int)
        row.output_tokens = tokens_out if tokens_out is not None else row.output_tokens


def _view_changed(task: TaskDir, row: TaskRow, name: str) -> bool:
    try:
        st = os.stat(name, dir_fd=task.fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
    if row.stamps.get(name) == stamp:
        return False
    row.stamps[name] = stamp
    return True


def _apply_views(task: TaskDir, row: TaskRow, texts: list[str]) -> None:
    meta = _json(task, METADATA)
    if meta is not None:
        row.source = _str(meta.get("source"))
        row.agent_type = _str(meta.get("agent_type"))
        row.user_id = _str(meta.get("user_id"))
        row.machine_id = _str(meta.get("machine_id"))
        row.created_ts = parse_time(meta.get("created_at")) or row.created_ts
    given = _json(task, INPUT)
    message = given.get("input_message") if given is not None else None
    if message is None and meta is not None and isinstance(meta.get("data"), dict):
        message = meta["data"].get("input_message")
    if message is not None:
        text = message if isinstance(message, str) else orjson.dumps(message).decode()
        if text[:MESSAGE_CHARS] != row.message:
            texts.append(text[:MAX_TEXT_PER_RECORD])
        row.message = text[:MESSAGE_CHARS]
    if row.source is None and given is not None:
        row.source = _str(given.get("source"))
    final = _json(task, FINAL_RESULT)
    if final is not None:
        _apply_final(row, final, texts)


def _apply_final(row: TaskRow, final: dict[str, Any], texts: list[str]) -> None:
    first_time = row.finished_ts is None
    failed = final.get("status") == "failed" or final.get("event_type") == "task:failed"
    row.status = "failed" if failed else "completed"
    row.finished_ts = parse_time(final.get("finished_at")) or row.updated_ts
    for name, kind in (("cost_usd", float), ("input_tokens", int), ("output_tokens", int)):
        value = _number(final.get(name), kind)
        if value is not None:
            setattr(row, name, value)
    row.duration_seconds = _number(final.get("duration_seconds"), float)
    row.exit_code = _number(final.get("exit_code"), int)
    error = final.get("error")
    row.error = None if error is None else (error if isinstance(error, str) else orjson.dumps(error).decode())
    if first_time:
        _text_of(final.get("result"), texts)
        if row.error and final.get("event_type") != "task:failed":  # task:failed's error came with its record
            texts.append(row.error[:MAX_TEXT_PER_RECORD])


def parse_time(value: Any) -> float | None:
    """Epoch seconds of an ISO 8601 string; None when missing or unparsable."""
    if not isinstance(value, str):
        return None
    moment = parse_timestamp(value)
    return None if moment is None else moment.timestamp()


def iso(ts: float | None) -> str | None:
    """ISO 8601 UTC with milliseconds (``2026-01-31T12:00:00.000Z``)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json(task: TaskDir, name: str) -> dict[str, Any] | None:
    raw = read_file(task.fd, name)
    if raw is None:
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def _text_of(value: Any, texts: list[str]) -> None:
    if value is None or value == "":
        return
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    texts.append(text[:MAX_TEXT_PER_RECORD])


def _budgeted(row: TaskRow, value: Any, texts: list[str]) -> None:
    if row.text_chars >= MAX_TEXT_PER_TASK:
        return
    before = len(texts)
    _text_of(value, texts)
    if len(texts) > before:
        texts[-1] = texts[-1][: MAX_TEXT_PER_TASK - row.text_chars]
        row.text_chars += len(texts[-1])


def _number(value: Any, kind: type[int] | type[float]) -> Any:
    number, _ = to_number(value, kind)
    if isinstance(number, int) and not -_INT_MAX - 1 <= number <= _INT_MAX:
        return None
    return number


def _first(data: dict[str, Any], *names: str) -> Any:
    return next((data[name] for name in names if data.get(name) is not None), None)


def _str(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def read_task(task: TaskDir) -> tuple[TaskRow, list[str]]:
    """A task's summary read from nothing (no index involved); retries once if a file shrinks meanwhile."""
    try:
        row = TaskRow(task.task_id)
        return row, scan(task, row)
    except Shrunk:
        row = TaskRow(task.task_id)
        return row, scan(task, row)

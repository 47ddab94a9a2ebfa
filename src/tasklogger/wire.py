"""Decode one raw stream entry into an Event, or raise BadEntry with the reason (pure).

This is the only module that sees untyped producer data; everything after it works on ``Event``.
See ``../shared/WIRE-FORMAT.md`` for the contract and docs/records.md for the dead-letter reasons.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from .errors import BadEntry, UnsafeTaskId

#: Longest task or webhook id accepted, in UTF-8 bytes (a directory name must stay well under NAME_MAX).
MAX_ID_BYTES = 128
MAX_TYPE_CHARS = 200

#: Path separators, NUL and the C0/C1 control characters: never part of a directory name we create.
_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f/\\]")

# Stream fields with a meaning of their own; any other field is kept verbatim in ``Event.extra``.
KNOWN_FIELDS = frozenset({"type", "timestamp", "task_id", "webhook_event_id", "data"})


@dataclass(slots=True)
class Event:
    """One well-formed stream entry. Never changed once decoded (not declared frozen: one is built per entry, and
    a frozen dataclass's constructor costs three times as much)."""

    entry_id: str
    type: str
    #: As the producer wrote it, or derived from the entry id when missing.
    timestamp: str
    #: None when the producer's timestamp parsed; "missing" or "invalid" otherwise.
    timestamp_flag: str | None
    task_id: str | None
    webhook_event_id: str | None
    data: dict[str, Any]
    extra: dict[str, str] = field(default_factory=dict)
    #: The entry's size in bytes (field names and values) as it came, what the entry size limit is checked
    #: against and what reads are sized by; not part of the event (two equal events may have come in different
    #: sizes).
    size: int = field(default=0, compare=False)

    @property
    def namespace(self) -> str:
        """The part of the type before the first colon (``task`` for ``task:output``)."""
        return self.type.partition(":")[0]


def decode(entry_id: bytes | str, fields: dict[bytes, bytes] | None, *, max_entry_bytes: int) -> Event:
    """Turn the raw fields of one stream entry into an Event.

    Raises BadEntry (dead-letter) for anything that cannot be understood.
    """
    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    if not fields:  # XADD needs a field, so an empty entry is one trimmed away while it was pending
        raise BadEntry("deleted_from_stream", "the entry was pending but is no longer in the stream")
    size = entry_size(fields)
    if size > max_entry_bytes:
        raise BadEntry("entry_too_large", f"{size} bytes, limit {max_entry_bytes}")
    try:
        # ``data`` (the bulk of an entry) goes to orjson as bytes: it checks the UTF-8 while it parses.
        text = {k.decode(): v.decode() for k, v in fields.items() if k != b"data"}
    except UnicodeDecodeError as exc:
        raise BadEntry("not_utf8", f"a field name or value is not UTF-8 ({exc.reason} at byte {exc.start})") from None

    event_type = text.get("type")
    if not event_type:
        raise BadEntry("missing_type", "the entry has no 'type' field")
    if len(event_type) > MAX_TYPE_CHARS or not event_type.isprintable() or event_type.strip() != event_type:
        raise BadEntry("invalid_type", f"type {event_type[:80]!r} is not a printable name")

    data = _decode_data(fields.get(b"data"))
    task_id = _id_from(text.get("task_id"), data.get("task_id"))
    webhook_id = _id_from(text.get("webhook_event_id"), data.get("webhook_event_id"))
    # A task's ids come back with each of its ~30 entries: one validated is remembered (a bounded set).
    if task_id is not None and task_id not in _SAFE_IDS:
        _remember_safe(check_name(task_id, reason="unsafe_task_id", what="task id"))
    if webhook_id is not None and webhook_id not in _SAFE_IDS:
        _remember_safe(check_name(webhook_id, reason="unsafe_webhook_event_id", what="webhook event id"))
    if task_id is None and webhook_id is None:
        raise BadEntry("no_task_or_webhook_id", f"{event_type} carries neither task_id nor webhook_event_id")

    timestamp, flag = _timestamp(text.get("timestamp"), eid)
    extra = {k: v for k, v in text.items() if k not in KNOWN_FIELDS}
    return Event(eid, event_type, timestamp, flag, task_id, webhook_id, data, extra, size)


def entry_size(fields: dict[bytes, bytes] | None) -> int:
    """An entry's size in bytes, field names and values: what the entry size limit and batch sizes count."""
    return sum(map(len, fields)) + sum(map(len, fields.values())) if fields else 0


_SAFE_IDS: set[str] = set()
_SAFE_IDS_LIMIT = 8192


def _remember_safe(value: str) -> None:
    if len(_SAFE_IDS) >= _SAFE_IDS_LIMIT:
        _SAFE_IDS.clear()
    _SAFE_IDS.add(value)


def check_name(value: str, *, reason: str = "unsafe_task_id", what: str = "task id") -> str:
    """Return ``value`` if it can safely be one directory or file name under the logs directory.

    Raises UnsafeTaskId otherwise: empty, ``.``/``..``, separators, NUL or control characters, a leading dot
    (reserved for the service's own names), or longer than MAX_ID_BYTES in UTF-8.
    """
    if not value:
        raise UnsafeTaskId(f"{what} is empty", reason=reason)
    if value.startswith("."):
        raise UnsafeTaskId(f"{what} {value[:80]!r} starts with a dot (reserved)", reason=reason)
    bad = _UNSAFE_CHARS.search(value)
    if bad is not None:
        kind = "a path separator" if bad.group() in "/\\" else "a control character"
        raise UnsafeTaskId(f"{what} {value[:80]!r} contains {kind}", reason=reason)
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise UnsafeTaskId(f"{what} is not valid Unicode", reason=reason) from None
    if size > MAX_ID_BYTES:
        raise UnsafeTaskId(f"{what} is longer than {MAX_ID_BYTES} bytes", reason=reason)
    return value


def preserve_fields(fields: dict[bytes, bytes] | None) -> dict[str, Any]:
    """The raw fields in a JSON-safe form for a dead letter: text stays text, other bytes become base64."""
    if fields is None:
        return {}
    out: dict[str, Any] = {}
    for key, value in fields.items():
        name = _safe_text(key, prefix="b64:")
        while name in out:  # a text name that happens to look like an encoded one: keep both
            name += "#"
        out[name] = _preserve_value(value)
    return out


def entry_id_time(entry_id: str) -> str:
    """The ISO 8601 UTC time of a stream entry id's milliseconds part."""
    ms = int(entry_id.partition("-")[0])
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_timestamp(value: str) -> datetime | None:
    """Parse an ISO 8601 timestamp as producers write it; None if it does not parse."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _decode_data(raw: bytes | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode()
        except UnicodeDecodeError as bad:
            raise BadEntry("not_utf8", f"'data' is not UTF-8 ({bad.reason} at byte {bad.start})") from None
        raise BadEntry("invalid_data", f"'data' is not JSON: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BadEntry("data_not_object", f"'data' is JSON {type(data).__name__}, not an object")
    return data


_ABSENT = (None, "", "null", "None")


def _id_from(field_value: str | None, data_value: Any) -> str | None:
    # Producers write "" or "null" for an id they do not know yet: that is absence, not an unsafe id.
    if field_value not in _ABSENT:
        return field_value
    if isinstance(data_value, str) and data_value not in _ABSENT:
        return data_value
    if isinstance(data_value, int) and not isinstance(data_value, bool):
        return str(data_value)
    return None


def _timestamp(value: str | None, entry_id: str) -> tuple[str, str | None]:
    if not value:
        try:
            return entry_id_time(entry_id), "missing"
        except (ValueError, OverflowError, OSError):
            return entry_id, "missing"  # an explicit id beyond any calendar: keep the id itself
    return value, None if parse_timestamp(value) is not None else "invalid"


def _safe_text(raw: bytes, *, prefix: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return prefix + base64.b64encode(raw).decode()


def _preserve_value(raw: bytes) -> Any:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(raw).decode()}

"""Unit tests of tasklogger.wire: decoding raw stream entries, id safety, dead-letter field preservation."""

from __future__ import annotations

import base64
import string
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasklogger.errors import BadEntry, UnsafeTaskId
from tasklogger.wire import (
    MAX_ID_BYTES,
    MAX_TYPE_CHARS,
    Event,
    check_name,
    decode,
    entry_id_time,
    parse_timestamp,
    preserve_fields,
)

EID = "1732450000000-0"
#: The time of EID's milliseconds, as the decoder must derive it when the timestamp is missing.
EID_TIME = "2024-11-24T12:06:40.000Z"
LIMIT = 1 << 20

#: Every reason wire.decode may give (docs/records.md, less the ones raised by the consumer and the store).
DECODE_REASONS = frozenset(
    {
        "missing_type",
        "invalid_type",
        "invalid_data",
        "data_not_object",
        "unsafe_task_id",
        "unsafe_webhook_event_id",
        "no_task_or_webhook_id",
        "entry_too_large",
        "not_utf8",
        "deleted_from_stream",
    }
)


def raw(**values: str | bytes | dict[str, Any] | list[Any] | None) -> dict[bytes, bytes]:
    """Stream fields as redis-py returns them: bytes names and values (a dict or list value is JSON-encoded)."""
    out: dict[bytes, bytes] = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, dict | list):
            out[name.encode()] = orjson.dumps(value)
        elif isinstance(value, str):
            out[name.encode()] = value.encode()
        else:
            out[name.encode()] = value
    return out


def reason_of(fields: dict[bytes, bytes] | None, *, limit: int = LIMIT, entry_id: str = EID) -> str:
    with pytest.raises(BadEntry) as info:
        decode(entry_id, fields, max_entry_bytes=limit)
    return info.value.reason


# --------------------------------------------------------------------------------------------- well-formed entries


def test_decode_minimal_task_event() -> None:
    event = decode(EID, raw(type="task:output", task_id="t-1", timestamp="2026-01-31T12:00:00Z"), max_entry_bytes=LIMIT)
    expected = Event(
        entry_id=EID,
        type="task:output",
        timestamp="2026-01-31T12:00:00Z",
        timestamp_flag=None,
        task_id="t-1",
        webhook_event_id=None,
        data={},
        extra={},
    )
    assert expected == event
    assert len(b"typetask:outputtask_idt-1timestamp2026-01-31T12:00:00Z") == event.size


def test_decode_accepts_bytes_entry_id() -> None:
    event = decode(EID.encode(), raw(type="task:output", task_id="t-1"), max_entry_bytes=LIMIT)
    assert EID == event.entry_id


def test_decode_keeps_data_verbatim() -> None:
    data = {
        "content": "héllo\nworld",
        "input": {"path": "/tmp/x", "n": [1, 2.5, None, True]},
        "cost_usd": "0.12",
        "unknown_member": None,
    }
    event = decode(EID, raw(type="task:tool_call", task_id="t-1", data=data), max_entry_bytes=LIMIT)
    assert data == event.data


def test_decode_full_webhook_event() -> None:
    fields = raw(
        type="webhook:task_created",
        timestamp="2026-01-31T12:00:00.123456+00:00",
        webhook_event_id="0b9f7c1e-3c1d-4a5e-9a51-0d6d1c2b3a4f",
        data={"task_id": "t-42", "source": "github", "event_type": "issue_comment", "input_message": "fix it"},
    )
    event = decode(EID, fields, max_entry_bytes=LIMIT)
    assert "t-42" == event.task_id
    assert "0b9f7c1e-3c1d-4a5e-9a51-0d6d1c2b3a4f" == event.webhook_event_id
    assert "webhook" == event.namespace
    assert {"task_id": "t-42", "source": "github", "event_type": "issue_comment", "input_message": "fix it"} == (
        event.data
    )


@pytest.mark.parametrize(
    ("event_type", "namespace"),
    [("task:output", "task"), ("knowledge:query", "knowledge"), ("no-colon", "no-colon"), ("a:b:c", "a")],
)
def test_event_namespace(event_type: str, namespace: str) -> None:
    event = decode(EID, raw(type=event_type, task_id="t-1"), max_entry_bytes=LIMIT)
    assert namespace == event.namespace


@pytest.mark.parametrize("data", [None, "", "null"])
def test_absent_or_null_data_is_an_empty_object(data: str | None) -> None:
    event = decode(EID, raw(type="task:started", task_id="t-1", data=data), max_entry_bytes=LIMIT)
    assert {} == event.data


def test_extra_fields_are_kept_verbatim_and_known_fields_are_not() -> None:
    fields = raw(
        type="task:output",
        task_id="t-1",
        timestamp="2026-01-31T12:00:00Z",
        webhook_event_id="w-1",
        data={"content": "x"},
        trace_id="abc-123",
        producer="agent-runner/2.3",
        empty="",
    )
    event = decode(EID, fields, max_entry_bytes=LIMIT)
    assert {"trace_id": "abc-123", "producer": "agent-runner/2.3", "empty": ""} == event.extra


def test_type_of_exactly_max_chars_is_accepted() -> None:
    event_type = "t:" + "x" * (MAX_TYPE_CHARS - 2)
    event = decode(EID, raw(type=event_type, task_id="t-1"), max_entry_bytes=LIMIT)
    assert event_type == event.type


def test_unknown_but_well_formed_types_are_accepted() -> None:
    for event_type in ("task:something_new", "brand:new", "no-colon", "knowledge:context_used"):
        event = decode(EID, raw(type=event_type, task_id="t-1"), max_entry_bytes=LIMIT)
        assert event_type == event.type


# ------------------------------------------------------------------------------------------------------- ids


def test_task_id_is_taken_from_data_when_the_field_is_missing() -> None:
    event = decode(EID, raw(type="task:output", data={"task_id": "t-7", "content": "x"}), max_entry_bytes=LIMIT)
    assert "t-7" == event.task_id


def test_webhook_id_is_taken_from_data_when_the_field_is_missing() -> None:
    event = decode(EID, raw(type="webhook:received", data={"webhook_event_id": "w-7"}), max_entry_bytes=LIMIT)
    assert "w-7" == event.webhook_event_id
    assert event.task_id is None


def test_integer_task_id_in_data_becomes_text() -> None:
    event = decode(EID, raw(type="task:output", data={"task_id": 42}), max_entry_bytes=LIMIT)
    assert "42" == event.task_id


def test_the_task_id_field_wins_over_data() -> None:
    event = decode(EID, raw(type="task:output", task_id="t-field", data={"task_id": "t-data"}), max_entry_bytes=LIMIT)
    assert "t-field" == event.task_id
    assert {"task_id": "t-data"} == event.data


@pytest.mark.parametrize("absent", ["", "null", "None"])
def test_empty_or_null_task_id_field_falls_back_to_data(absent: str) -> None:
    event = decode(
        EID, raw(type="webhook:task_created", task_id=absent, webhook_event_id="w-1", data={"task_id": "t-9"}),
        max_entry_bytes=LIMIT,
    )  # fmt: skip
    assert "t-9" == event.task_id


@pytest.mark.parametrize("absent", ["", "null", "None"])
def test_empty_or_null_task_id_field_is_absence_not_an_unsafe_id(absent: str) -> None:
    event = decode(EID, raw(type="webhook:received", task_id=absent, webhook_event_id="w-1"), max_entry_bytes=LIMIT)
    assert event.task_id is None
    assert "w-1" == event.webhook_event_id


@pytest.mark.parametrize("absent", ["", "null", "None"])
def test_empty_or_null_webhook_id_field_is_absence(absent: str) -> None:
    event = decode(EID, raw(type="task:output", task_id="t-1", webhook_event_id=absent), max_entry_bytes=LIMIT)
    assert event.webhook_event_id is None


@pytest.mark.parametrize("absent", ["", "null"])
def test_empty_or_null_task_id_in_data_is_absence(absent: str) -> None:
    """The "" / "null" sentinel means "not known yet" in data as much as in the stream field."""
    event = decode(
        EID, raw(type="webhook:received", webhook_event_id="w-1", data={"task_id": absent}), max_entry_bytes=LIMIT
    )
    assert event.task_id is None


@pytest.mark.parametrize("value", [None, True, False, 1.5, [], {}, ["t-1"]])
def test_non_text_task_id_in_data_is_absence(value: Any) -> None:
    event = decode(
        EID, raw(type="webhook:received", webhook_event_id="w-1", data={"task_id": value}), max_entry_bytes=LIMIT
    )
    assert event.task_id is None


# ------------------------------------------------------------------------------------------------------ timestamps


@pytest.mark.parametrize("stamp", ["2026-01-31T12:00:00Z", "2026-01-31T12:00:00.123456+00:00"])
def test_both_producer_timestamp_forms_are_kept_as_given(stamp: str) -> None:
    event = decode(EID, raw(type="task:output", task_id="t-1", timestamp=stamp), max_entry_bytes=LIMIT)
    assert stamp == event.timestamp
    assert event.timestamp_flag is None


@pytest.mark.parametrize(
    "fields", [raw(type="task:output", task_id="t-1"), raw(type="task:output", task_id="t-1", timestamp="")]
)
def test_missing_timestamp_is_derived_from_the_entry_id(fields: dict[bytes, bytes]) -> None:
    event = decode(EID, fields, max_entry_bytes=LIMIT)
    assert EID_TIME == event.timestamp
    assert "missing" == event.timestamp_flag


def test_derived_timestamp_keeps_the_milliseconds() -> None:
    event = decode("1732450000123-7", raw(type="task:output", task_id="t-1"), max_entry_bytes=LIMIT)
    assert "2024-11-24T12:06:40.123Z" == event.timestamp
    assert "missing" == event.timestamp_flag


@pytest.mark.parametrize(
    "stamp", ["yesterday", "2026-13-01T00:00:00Z", "31/01/2026 12:00", " ", "2026-01-31T25:00:00Z"]
)
def test_unparseable_timestamp_is_kept_as_given_and_flagged_invalid(stamp: str) -> None:
    event = decode(EID, raw(type="task:output", task_id="t-1", timestamp=stamp), max_entry_bytes=LIMIT)
    assert stamp == event.timestamp
    assert "invalid" == event.timestamp_flag


def test_missing_timestamp_with_the_largest_stream_id_does_not_crash() -> None:
    """Stream ids go up to 2**64-1 ms (XADD with an explicit id); decode must return an Event or a BadEntry."""
    entry_id = "18446744073709551615-0"
    event = decode(entry_id, raw(type="task:output", task_id="t-1"), max_entry_bytes=LIMIT)
    assert "missing" == event.timestamp_flag
    assert entry_id == event.entry_id


def test_entry_id_time() -> None:
    assert "1970-01-01T00:00:00.000Z" == entry_id_time("0-0")
    assert "2024-11-24T12:06:40.999Z" == entry_id_time("1732450000999-12")
    assert "2024-11-24T12:06:40.000Z" == entry_id_time("1732450000000")


def test_parse_timestamp() -> None:
    parsed = parse_timestamp("2026-01-31T12:00:00.123456+00:00")
    assert parsed is not None
    assert (2026, 1, 31, 12, 0, 0, 123456) == (
        parsed.year, parsed.month, parsed.day, parsed.hour, parsed.minute, parsed.second, parsed.microsecond
    )  # fmt: skip
    zulu = parse_timestamp("2026-01-31T12:00:00Z")
    naive = parse_timestamp("2026-01-31T12:00:00")
    assert zulu is not None and naive is not None
    assert zulu == naive  # a naive time is read as UTC
    assert parse_timestamp("not a time") is None


# ---------------------------------------------------------------------------------------------------- dead letters


@pytest.mark.parametrize("fields", [None, {}])
def test_deleted_from_stream(fields: dict[bytes, bytes] | None) -> None:
    assert "deleted_from_stream" == reason_of(fields)


@pytest.mark.parametrize(
    "fields",
    [
        raw(task_id="t-1", data={"content": "x"}),
        raw(type="", task_id="t-1"),
        raw(Type="task:output", task_id="t-1"),
    ],
)
def test_missing_type(fields: dict[bytes, bytes]) -> None:
    assert "missing_type" == reason_of(fields)


@pytest.mark.parametrize(
    "event_type",
    [" task:output", "task:output ", "task:\noutput", "bad\x00type", "tab\there", "x" * (MAX_TYPE_CHARS + 1), "\u200b"],
)
def test_invalid_type(event_type: str) -> None:
    assert "invalid_type" == reason_of(raw(type=event_type, task_id="t-1"))


@pytest.mark.parametrize("data", [b"{not json", b"{'a': 1}", b'{"a": 1', b"[1,", b"undefined", b'"\\ud800"', b"{} {}"])
def test_invalid_data(data: bytes) -> None:
    assert "invalid_data" == reason_of(raw(type="task:output", task_id="t-1", data=data))


@pytest.mark.parametrize("data", [b"[1, 2]", b'"text"', b"42", b"1.5", b"true", b"false", b"[]"])
def test_data_not_object(data: bytes) -> None:
    assert "data_not_object" == reason_of(raw(type="task:output", task_id="t-1", data=data))


@pytest.mark.parametrize("task_id", ["..", ".", ".hidden", "a/b", "/", "../etc", "a\\b", "a\x00b", "x" * 129, "é" * 65])
def test_unsafe_task_id_in_the_field(task_id: str) -> None:
    fields = raw(type="task:output", task_id=task_id)
    assert "unsafe_task_id" == reason_of(fields)
    with pytest.raises(UnsafeTaskId):
        decode(EID, fields, max_entry_bytes=LIMIT)


@pytest.mark.parametrize("task_id", ["..", "../../etc/passwd", ".tasklogger", "a/b", "nl\nhere"])
def test_unsafe_task_id_in_data(task_id: str) -> None:
    assert "unsafe_task_id" == reason_of(
        raw(type="webhook:task_created", webhook_event_id="w-1", data={"task_id": task_id})
    )


@pytest.mark.parametrize("webhook_id", ["..", ".x", "a/b", "a\\b", "\x7f", "w" * 129])
def test_unsafe_webhook_event_id(webhook_id: str) -> None:
    assert "unsafe_webhook_event_id" == reason_of(raw(type="webhook:received", webhook_event_id=webhook_id))
    assert "unsafe_webhook_event_id" == reason_of(raw(type="webhook:received", data={"webhook_event_id": webhook_id}))


def test_unsafe_webhook_id_is_reported_even_with_a_safe_task_id() -> None:
    assert "unsafe_webhook_event_id" == reason_of(raw(type="webhook:received", task_id="t-1", webhook_event_id="../w"))


@pytest.mark.parametrize(
    "fields",
    [
        raw(type="task:output"),
        raw(type="task:output", data={"content": "x"}),
        raw(type="task:output", task_id="", webhook_event_id=""),
        raw(type="task:output", task_id="null", webhook_event_id="null"),
        raw(type="webhook:received", data={"task_id": None, "webhook_event_id": None}),
        raw(type="webhook:received", data={"task_id": "", "webhook_event_id": ""}),
    ],
)
def test_no_task_or_webhook_id(fields: dict[bytes, bytes]) -> None:
    assert "no_task_or_webhook_id" == reason_of(fields)


def test_entry_too_large_counts_names_and_values() -> None:
    fields = raw(type="task:output", task_id="t-1", data={"content": "x" * 100})
    size = sum(len(k) + len(v) for k, v in fields.items())
    assert "entry_too_large" == reason_of(fields, limit=size - 1)
    event = decode(EID, fields, max_entry_bytes=size)  # exactly at the limit is fine
    assert "t-1" == event.task_id


def test_entry_too_large_is_checked_before_anything_else() -> None:
    fields = {b"\xff": b"\xff" * 10}  # would otherwise be not_utf8 and missing_type
    assert "entry_too_large" == reason_of(fields, limit=5)


@pytest.mark.parametrize(
    "fields",
    [
        {b"type": b"task:output", b"task_id": b"t-\xff"},
        {b"type": b"task:\xc3", b"task_id": b"t-1"},
        {b"type": b"task:output", b"task_id": b"t-1", b"na\xffme": b"v"},
        {b"type": b"task:output", b"task_id": b"t-1", b"data": b'{"content": "\xff\xfe"}'},
        {b"type": b"task:output", b"task_id": b"t-1", b"data": b"\xff\xfe\x00"},
        {b"type": b"task:output", b"task_id": b"t-1", b"data": b'{"a": "\xed\xa0\x80"}'},  # UTF-8-encoded surrogate
    ],
)
def test_not_utf8(fields: dict[bytes, bytes]) -> None:
    assert "not_utf8" == reason_of(fields)


def test_bad_entry_carries_reason_and_detail() -> None:
    with pytest.raises(BadEntry) as info:
        decode(EID, raw(type="task:output", task_id="t-1", data=b"[1]"), max_entry_bytes=LIMIT)
    assert "data_not_object" == info.value.reason
    assert "list" in info.value.detail
    assert str(info.value).startswith("data_not_object: ")


# ------------------------------------------------------------------------------------------------------ check_name


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        ".hidden",
        ".tasklogger",
        "/",
        "a/b",
        "/abs",
        "trailing/",
        "\\",
        "a\\b",
        "\x00",
        "a\x00b",
        "\x01",
        "\x1f",
        "line\nbreak",
        "car\rriage",
        "tab\t",
        "\x7f",
        "\x85",
        "\x9f",
        "x" * (MAX_ID_BYTES + 1),
        "é" * 65,  # 130 UTF-8 bytes, 65 characters
        "€" * 43,  # 129 UTF-8 bytes, 43 characters
        "😀" * 33,  # 132 UTF-8 bytes, 33 characters
        "\ud800",  # a lone surrogate cannot be encoded
    ],
)
def test_check_name_rejects(name: str) -> None:
    with pytest.raises(UnsafeTaskId) as info:
        check_name(name)
    assert "unsafe_task_id" == info.value.reason


@pytest.mark.parametrize(
    "name",
    [
        "0b9f7c1e-3c1d-4a5e-9a51-0d6d1c2b3a4f",
        "t-42",
        "42",
        "task.with.dots",
        "a..b",
        "trailing.",
        "with space",
        "タスク-1",
        "задача",
        "ñandú",
        "x" * MAX_ID_BYTES,
        "é" * 64,  # exactly 128 bytes
        "€" * 42,  # 126 bytes
        "😀" * 32,  # exactly 128 bytes
    ],
)
def test_check_name_accepts(name: str) -> None:
    assert name == check_name(name)


def test_check_name_passes_reason_and_what_through() -> None:
    with pytest.raises(UnsafeTaskId) as info:
        check_name("a/b", reason="unsafe_webhook_event_id", what="webhook event id")
    assert "unsafe_webhook_event_id" == info.value.reason
    assert "webhook event id" in info.value.detail
    assert "separator" in info.value.detail


def test_check_name_counts_bytes_not_characters() -> None:
    assert (64, 128) == (len("é" * 64), len(("é" * 64).encode()))
    check_name("é" * 64)
    with pytest.raises(UnsafeTaskId):
        check_name("é" * 65)  # only 65 characters, but 130 bytes


# ------------------------------------------------------------------------------------------------- preserve_fields


def test_preserve_fields_none_is_empty() -> None:
    assert {} == preserve_fields(None)


def test_preserve_fields_keeps_text_as_text() -> None:
    assert {"type": "task:output", "data": '{"a": "é"}'} == preserve_fields(
        {b"type": b"task:output", b"data": '{"a": "é"}'.encode()}
    )


def test_preserve_fields_base64_encodes_non_utf8_values_and_names() -> None:
    value = b"\xff\xfe\x00binary\x80"
    name = b"na\xffme"
    out = preserve_fields({b"type": b"task:output", b"data": value, name: b"v"})
    assert {"type", "data", "b64:" + base64.b64encode(name).decode()} == set(out)
    assert {"base64": base64.b64encode(value).decode()} == out["data"]
    assert value == base64.b64decode(out["data"]["base64"])
    encoded_name = next(k for k in out if k.startswith("b64:"))
    assert name == base64.b64decode(encoded_name.removeprefix("b64:"))
    assert "v" == out[encoded_name]
    assert orjson.loads(orjson.dumps(out)) == out  # JSON-safe for a dead-letter record


@given(st.dictionaries(st.binary(max_size=20).filter(lambda k: not k.startswith(b"b64:")), st.binary(max_size=60)))
def test_preserve_fields_is_lossless_and_json_safe(fields: dict[bytes, bytes]) -> None:
    out = preserve_fields(fields)
    orjson.dumps(out)
    restored: dict[bytes, bytes] = {}
    for key, value in out.items():
        raw_key = base64.b64decode(key.removeprefix("b64:")) if key.startswith("b64:") else key.encode()
        raw_value = base64.b64decode(value["base64"]) if isinstance(value, dict) else value.encode()
        restored[raw_key] = raw_value
    assert fields == restored


# ---------------------------------------------------------------------------------------------------- properties


def _mostly(usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``usual`` three times out of four, ``odd`` otherwise."""
    return st.sampled_from([True, True, True, False]).flatmap(lambda usual_one: usual if usual_one else odd)


_NAMES = st.sampled_from([b"type", b"task_id", b"webhook_event_id", b"data", b"timestamp", b"extra"]) | st.binary(
    max_size=8
)
_TEXT_IDS = st.sampled_from(
    ["t-1", "w-1", "", "null", "None", ".", "..", ".hidden", "a/b", "a\\b", "x" * 129, "é" * 65, "é" * 64, "\x00"]
) | st.text(max_size=12)
_JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
_DATA = st.fixed_dictionaries(
    {},
    optional={
        "task_id": _TEXT_IDS | _JSON_SCALARS,
        "webhook_event_id": _TEXT_IDS | _JSON_SCALARS,
        "content": _JSON_SCALARS,
    },
)
_ANY_BYTES = (
    st.binary(max_size=40)
    | _TEXT_IDS.map(str.encode)
    | st.sampled_from([b"task:output", b"webhook:received", b"2026-01-31T12:00:00Z", b"null", b"[]", b"{}", b" x"])
    | st.text(alphabet=string.printable, max_size=20).map(str.encode)
)
_TYPES = _mostly(
    st.sampled_from(["task:output", "webhook:received", "brand:new", "task:created"]),
    st.sampled_from(["", " x", "x" * 201, "a\x00b"]) | st.text(max_size=12),
)
_TIMESTAMPS = st.sampled_from(["2026-01-31T12:00:00Z", "2026-01-31T12:00:00.123456+00:00", "", "nope"]) | st.text(
    max_size=30
)


def _data_bytes(data: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(data)
    except TypeError:  # an integer beyond 64 bits: not something a producer's JSON encoder emits
        return b"{}"


#: Entries shaped like the producers' (the known fields, often with plausible values), plus random fields.
_ENTRIES = st.builds(
    lambda random, known: {**random, **known},
    _mostly(st.just({}), st.dictionaries(_NAMES, _ANY_BYTES, max_size=3)),
    st.fixed_dictionaries(
        {
            b"type": _mostly(_TYPES.map(str.encode), _ANY_BYTES),
            b"task_id": _mostly(_TEXT_IDS.map(str.encode), _ANY_BYTES),
        },
        optional={
            b"webhook_event_id": _mostly(_TEXT_IDS.map(str.encode), _ANY_BYTES),
            b"data": _mostly(_DATA.map(_data_bytes), _ANY_BYTES),
            b"timestamp": _mostly(_TIMESTAMPS.map(str.encode), _ANY_BYTES),
        },
    ),
)
_LIMITS = _mostly(st.just(LIMIT), st.integers(min_value=0, max_value=400))


def _assert_safe_id(value: str) -> None:
    assert value != ""
    assert not value.startswith(".")
    for forbidden in ("/", "\\", "\x00"):
        assert forbidden not in value
    assert all(not (ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F) for c in value)
    assert len(value.encode("utf-8")) <= MAX_ID_BYTES


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(_ENTRIES, _LIMITS)
def test_decode_raises_only_bad_entry_and_accepts_only_safe_ids(fields: dict[bytes, bytes], limit: int) -> None:
    try:
        event = decode(EID, fields, max_entry_bytes=limit)
    except BadEntry as exc:  # any other exception is a defect and fails the test
        assert exc.reason in DECODE_REASONS
        return
    assert isinstance(event, Event)
    assert event.type != ""
    assert isinstance(event.data, dict)
    assert event.task_id is not None or event.webhook_event_id is not None
    if event.task_id is not None:
        _assert_safe_id(event.task_id)
    if event.webhook_event_id is not None:
        _assert_safe_id(event.webhook_event_id)
    assert event.timestamp_flag in (None, "missing", "invalid")
    assert not set(event.extra) & {"type", "timestamp", "task_id", "webhook_event_id", "data"}


@given(st.text(max_size=200))
def test_check_name_either_returns_the_value_or_raises_unsafe_task_id(name: str) -> None:
    try:
        result = check_name(name)
    except UnsafeTaskId:
        return
    assert name == result
    _assert_safe_id(result)

"""Unit tests of tasklogger.records: the JSONL line format and its hash chain."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasklogger.records import Record, RecordError, encode, genesis, link, parse_line, stream_id_key

RELPATH = "t-42/03-agent-output.jsonl"


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def body(seq: int, entry_id: str = "1732450000000-0", **rest: Any) -> dict[str, Any]:
    return {"seq": seq, "id": entry_id, "type": "task:output", "ts": "2026-01-31T12:00:00Z", **rest, "data": {}}


def chain(bodies: list[dict[str, Any]], relpath: str = RELPATH) -> list[bytes]:
    """The lines of a file holding ``bodies``, in order."""
    lines: list[bytes] = []
    prev = genesis(relpath)
    for b in bodies:
        line, prev = encode(b, prev)
        lines.append(line)
    return lines


def verify(lines: list[bytes], relpath: str = RELPATH) -> bool:
    """What an auditor does: parse every line and check each link, starting from the file's genesis."""
    prev = genesis(relpath)
    for expected_seq, line in enumerate(lines, start=1):
        record = parse_line(line)
        if record.seq != expected_seq or link(prev, record.canonical) != record.hash:
            return False
        prev = record.hash
    return True


def with_hash(canonical: bytes, digest_hex: str) -> bytes:
    return canonical[:-1] + b',"hash":"' + digest_hex.encode() + b'"}\n'


# ------------------------------------------------------------------------------------------------------------ genesis


def test_genesis_is_sha256_of_the_version_and_the_path() -> None:
    assert sha256(b"tasklogger-chain-v1\x00t-42/03-agent-output.jsonl") == genesis(RELPATH)
    assert 32 == len(genesis(RELPATH))


def test_genesis_differs_per_relpath() -> None:
    paths = [
        "t-42/03-agent-output.jsonl",
        "t-43/03-agent-output.jsonl",
        "t-42/02-webhook-flow.jsonl",
        "t-42/03-user-inputs.jsonl",
        ".tasklogger/dead-letters.jsonl",
        "t-42/03-agent-output.jsonl ",
    ]
    assert len(paths) == len({genesis(p) for p in paths})


def test_genesis_encodes_the_path_as_utf8() -> None:
    assert sha256(b"tasklogger-chain-v1\x00" + "タスク/03-agent-output.jsonl".encode()) == genesis(
        "タスク/03-agent-output.jsonl"
    )


# ------------------------------------------------------------------------------------------------------------- encode


def test_encode_known_vector() -> None:
    prev = bytes(32)
    canonical = b'{"seq":1,"id":"1-0"}'
    digest = sha256(prev + canonical)
    line, returned = encode({"seq": 1, "id": "1-0"}, prev)
    assert b'{"seq":1,"id":"1-0","hash":"' + digest.hex().encode() + b'"}\n' == line
    assert digest == returned


def test_encode_line_shape() -> None:
    b = body(1, data_extra="x")
    prev = genesis(RELPATH)
    line, digest = encode(b, prev)
    assert line.endswith(b"\n")
    assert 1 == line.count(b"\n")
    parsed = json.loads(line)
    assert {**b, "hash": digest.hex()} == parsed
    assert [*b, "hash"] == list(parsed)  # hash is the last member, the body's order is kept
    assert sha256(prev + orjson.dumps(b)) == digest


def test_encode_escapes_newlines_inside_values() -> None:
    line, _ = encode(body(1, content="line one\nline two\r\n"), bytes(32))
    assert 1 == line.count(b"\n")
    assert "line one\nline two\r\n" == parse_line(line).body["content"]


def test_encode_depends_on_the_previous_hash() -> None:
    b = body(1)
    assert encode(b, bytes(32))[1] != encode(b, b"\x01" + bytes(31))[1]


# ------------------------------------------------------------------------------------------------------- parse_line


def test_parse_line_round_trip() -> None:
    b = body(3, "1732450000000-5", content="héllo", n=[1, 2.5, None, True])
    prev = sha256(b"previous")
    line, digest = encode(b, prev)
    record = parse_line(line)
    assert Record(seq=3, entry_id="1732450000000-5", body=b, canonical=orjson.dumps(b), hash=digest) == record
    assert record == parse_line(line[:-1])  # the newline is optional


def test_link_matches_encode() -> None:
    b = body(1)
    prev = genesis(RELPATH)
    line, digest = encode(b, prev)
    assert digest == link(prev, parse_line(line).canonical)
    assert sha256(prev + orjson.dumps(b)) == link(prev, orjson.dumps(b))


def test_chain_links_each_record_to_the_previous() -> None:
    bodies = [body(n, f"1732450000000-{n}", content=f"step {n}") for n in range(1, 6)]
    records = [parse_line(line) for line in chain(bodies)]
    prev = genesis(RELPATH)
    for b, record in zip(bodies, records, strict=True):
        assert sha256(prev + orjson.dumps(b)) == record.hash
        assert link(prev, record.canonical) == record.hash
        prev = record.hash
    assert verify(chain(bodies))


def test_a_chain_does_not_verify_under_another_path() -> None:
    lines = chain([body(1), body(2, "1732450000000-1")], "t-1/03-agent-output.jsonl")
    assert verify(lines, "t-1/03-agent-output.jsonl")
    assert not verify(lines, "t-2/03-agent-output.jsonl")
    assert not verify(lines, "t-1/02-webhook-flow.jsonl")


def test_a_changed_byte_in_the_body_breaks_the_link() -> None:
    lines = chain([body(n, f"1732450000000-{n}", content="abc") for n in range(1, 4)])
    tampered = lines[1].replace(b'"content":"abc"', b'"content":"abd"')
    assert tampered != lines[1]
    record = parse_line(tampered)  # still a well-formed line ...
    assert "abd" == record.body["content"]
    assert not verify([lines[0], tampered, lines[2]])  # ... but it no longer links


def test_every_single_byte_change_in_the_canonical_part_is_detected() -> None:
    lines = chain([body(1, content="abc", n=12)])
    canonical_len = len(parse_line(lines[0]).canonical) - 1  # all but the closing brace, which is re-added
    for i in range(canonical_len):
        changed = bytearray(lines[0])
        changed[i] = changed[i] ^ 0x01
        try:
            ok = verify([bytes(changed)])
        except RecordError:
            ok = False
        assert not ok, f"a change at byte {i} went unnoticed"


def test_reordered_or_deleted_records_do_not_verify() -> None:
    lines = chain([body(n, f"1732450000000-{n}") for n in range(1, 4)])
    assert verify(lines)
    assert not verify([lines[0], lines[2], lines[1]])
    assert not verify([lines[0], lines[2]])
    assert not verify([lines[1], lines[2]])


def test_a_changed_hash_breaks_the_link() -> None:
    (line,) = chain([body(1)])
    record = parse_line(line)
    other_hex = bytes(b ^ 0xFF for b in record.hash).hex()
    forged = with_hash(record.canonical, other_hex)
    assert not verify([forged])


# ----------------------------------------------------------------------------------------------- malformed lines


def test_rejects_a_line_without_hash_member() -> None:
    with pytest.raises(RecordError):
        parse_line(b'{"seq":1,"id":"1-0","type":"task:output","data":{}}\n')


def test_rejects_a_hash_that_is_not_the_last_member() -> None:
    digest_hex = sha256(b"x").hex()
    with pytest.raises(RecordError):
        parse_line(b'{"hash":"' + digest_hex.encode() + b'","seq":1,"id":"1-0"}\n')


@pytest.mark.parametrize(
    "bad_hex",
    [
        "A" * 64,  # upper case
        "g" + "0" * 63,
        "0" * 63,  # too short
        "0" * 65,  # too long
        "0" * 62 + " 0",
        "",
    ],
)
def test_rejects_bad_hex(bad_hex: str) -> None:
    with pytest.raises(RecordError):
        parse_line(with_hash(b'{"seq":1,"id":"1-0"}', bad_hex))


def test_rejects_every_truncation() -> None:
    (line,) = chain([body(1, content="some content")])
    for cut in range(len(line) - 1):  # line[: len - 1] is the line without its newline: complete
        with pytest.raises(RecordError):
            parse_line(line[:cut])


@pytest.mark.parametrize("line", [b"", b"\n", b"}", b'"}', b"null\n", b"garbage\n"])
def test_rejects_empty_and_garbage(line: bytes) -> None:
    with pytest.raises(RecordError):
        parse_line(line)


@pytest.mark.parametrize(
    "canonical",
    [
        b"[1}",  # an array cut open by the hash member
        b'"text"}',
        b"1}",
        b"}",
        b'{"seq":1,,"id":"1-0"}',
        b'{"seq":1,"id":"1-0"',
    ],
)
def test_rejects_non_objects_and_broken_json(canonical: bytes) -> None:
    with pytest.raises(RecordError):
        parse_line(with_hash(canonical, "0" * 64))


@pytest.mark.parametrize(
    "fields",
    [
        {"id": "1-0"},  # no seq
        {"seq": 1},  # no id
        {"seq": 0, "id": "1-0"},
        {"seq": -1, "id": "1-0"},
        {"seq": "1", "id": "1-0"},
        {"seq": 1.0, "id": "1-0"},
        {"seq": None, "id": "1-0"},
        {"seq": 1, "id": 5},
        {"seq": 1, "id": None},
        {"seq": True, "id": "1-0"},  # a JSON boolean is not a sequence number
    ],
)
def test_rejects_missing_or_bad_seq_and_id(fields: dict[str, Any]) -> None:
    line, _ = encode(fields, bytes(32))
    with pytest.raises(RecordError):
        parse_line(line)


def test_record_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_line(b"nope")


# --------------------------------------------------------------------------------------------------- stream ids


@pytest.mark.parametrize(
    ("entry_id", "key"), [("1732450000000-3", (1732450000000, 3)), ("5", (5, 0)), ("0-0", (0, 0)), ("7-", (7, 0))]
)
def test_stream_id_key(entry_id: str, key: tuple[int, int]) -> None:
    assert key == stream_id_key(entry_id)


def test_stream_id_key_orders_numerically() -> None:
    ids = ["1732450000000-10", "999-0", "1732450000000-2", "1732450000001-0"]
    assert ["999-0", "1732450000000-2", "1732450000000-10", "1732450000001-0"] == sorted(ids, key=stream_id_key)


# --------------------------------------------------------------------------------------------------- properties

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
BODIES = st.builds(
    lambda seq, entry_id, rest: {"seq": seq, "id": entry_id, **rest},
    st.integers(min_value=1, max_value=2**63 - 1),
    st.text(),
    st.dictionaries(st.text().filter(lambda k: k not in ("seq", "id", "hash")), JSON_VALUES, max_size=6),
)


@given(BODIES, st.binary(min_size=32, max_size=32))
def test_round_trip(b: dict[str, Any], prev: bytes) -> None:
    line, digest = encode(b, prev)
    record = parse_line(line)
    assert b == record.body
    assert list(b) == list(record.body)
    assert orjson.dumps(b) == record.canonical
    assert (b["seq"], b["id"]) == (record.seq, record.entry_id)
    assert digest == record.hash
    assert link(prev, record.canonical) == record.hash
    assert line.endswith(b"\n") and 1 == line.count(b"\n")
    assert {**b, "hash": digest.hex()} == json.loads(line)


@given(st.lists(BODIES, min_size=1, max_size=5), st.text(min_size=1, max_size=30))
def test_chains_verify(bodies: list[dict[str, Any]], relpath: str) -> None:
    bodies = [{**b, "seq": n} for n, b in enumerate(bodies, start=1)]
    assert verify(chain(bodies, relpath), relpath)

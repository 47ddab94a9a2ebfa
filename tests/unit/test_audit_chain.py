"""The chain checker and the signatures (pure): each kind of damage to a chained file is found at its line, any
single changed byte is found, and a signature binds every member of its record."""

from __future__ import annotations

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from tasklogger import records
from tasklogger.audit.chain import CHANGED, EXTRA, MISSING, REORDERED, TRUNCATED, check_chain, head_problem
from tasklogger.audit.signing import Signer, check_signature

REL = "t-1/03-agent-output.jsonl"


def chained(n: int, rel: str = REL) -> list[bytes]:
    prev, lines = records.genesis(rel), []
    for seq in range(1, n + 1):
        line, prev = records.encode({"seq": seq, "id": f"{1000 + seq}-0", "data": {"n": seq}}, prev)
        lines.append(line)
    return lines


def kinds(data: bytes, rel: str = REL) -> set[tuple[int | None, str]]:
    return {(p.line, p.kind) for p in check_chain("t-1", rel, data).problems}


def test_intact_chain_has_no_problem_and_knows_its_head() -> None:
    lines = chained(5)

    chain = check_chain("t-1", REL, b"".join(lines))

    assert chain.problems == [] and chain.count == 5 and chain.lines == 5
    assert chain.last is not None and chain.last.hash == records.parse_line(lines[-1]).hash
    assert head_problem("t-1", chain, 5, chain.last.hash.hex(), "x", extra_kind=EXTRA) is None


def test_each_kind_of_damage_is_found_at_its_line() -> None:
    lines = chained(6)

    assert kinds(b"".join([*lines[:2], lines[2].replace(b'"n":3', b'"n":4'), *lines[3:]])) == {(3, CHANGED)}
    assert kinds(b"".join([*lines[:3], *lines[4:]])) == {(4, MISSING)}
    assert kinds(b"".join([*lines[:1], *lines[3:]])) == {(2, MISSING)}
    assert kinds(b"".join([lines[0], lines[2], lines[1], *lines[3:]])) == {(2, REORDERED)}
    assert kinds(b"".join([*lines, lines[5]])) == {(7, EXTRA)}
    assert kinds(b"".join(lines)[:-10]) == {(6, TRUNCATED)}
    assert kinds(b"".join([*lines[:5], b"not a record\n"])) == {(6, CHANGED)}


def test_a_chain_moved_to_another_path_does_not_verify() -> None:
    assert kinds(b"".join(chained(3)), "t-2/03-agent-output.jsonl") == {(1, CHANGED)}


def test_recorded_heads_find_truncation_change_and_extra_records() -> None:
    lines = chained(4)
    chain = check_chain("t-1", REL, b"".join(lines))
    head3 = records.parse_line(lines[2]).hash.hex()

    assert head_problem("t-1", chain, 3, head3, "the digest", extra_kind=None) is None
    extra = head_problem("t-1", chain, 3, head3, "the digest", extra_kind="unsealed_change")
    assert extra is not None and (extra.line, extra.kind) == (4, "unsealed_change")
    changed = head_problem("t-1", chain, 3, "00" * 32, "the digest", extra_kind=None)
    assert changed is not None and (changed.line, changed.kind) == (3, CHANGED)
    short = head_problem("t-1", chain, 6, "00" * 32, "the digest", extra_kind=None)
    assert short is not None and (short.line, short.kind) == (5, TRUNCATED)


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0), value=st.integers(min_value=0, max_value=255))
def test_any_changed_byte_is_found(position: int, value: int) -> None:
    data = bytearray(b"".join(chained(4)))
    position %= len(data)
    if data[position] == value:
        value ^= 1
    data[position] = value

    assert check_chain("t-1", REL, bytes(data)).problems


def test_signature_binds_every_member() -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    body = signer.sign_body({"seq": 1, "id": "1-0", "files": {"a": {"sha256": "00" * 32}}})
    line, _ = records.encode(body, records.genesis("t/x.jsonl"))
    record = records.parse_line(line)

    assert check_signature(record.canonical, record.body, signer.public) is None
    assert check_signature(record.canonical, record.body, None) is None
    other = Signer(Ed25519PrivateKey.generate())
    assert "not by the given public key" in (check_signature(record.canonical, record.body, other.public) or "")
    forged = record.canonical.replace(b'"seq":1', b'"seq":2')
    assert check_signature(forged, orjson.loads(forged), signer.public) == "signature does not verify"
    unsigned, _ = records.encode({"seq": 1, "id": "1-0"}, records.genesis("t/x.jsonl"))
    plain = records.parse_line(unsigned)
    assert check_signature(plain.canonical, plain.body, signer.public) == "not signed"


@pytest.mark.parametrize("n", [0, 1, 3])
def test_empty_and_short_files(n: int) -> None:
    chain = check_chain("t-1", REL, b"".join(chained(n)))

    assert chain.problems == [] and chain.count == n

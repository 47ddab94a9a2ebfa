"""The JSONL record format and its hash chain (pure); docs/records.md is the prose version.

Each line of a ``.jsonl`` file is one JSON object whose first member is ``seq`` (1, 2, 3, ... within the file)
and whose last member is ``hash``. The canonical bytes of a record are the line without its trailing
``,"hash":"…"`` member (and without the newline), i.e. exactly what ``orjson.dumps(body)`` produced, so a
verifier never re-serialises anything::

    hash(n) = SHA-256( hash(n-1) || canonical bytes of record n )     (raw 32-byte digests)
    hash(0) = SHA-256( b"tasklogger-chain-v1\\0" || relative path of the file )

The genesis binds a chain to its file's place (``task-id/03-agent-output.jsonl``), so a record or a whole file
moved to another task does not verify.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

CHAIN_VERSION = b"tasklogger-chain-v1\x00"
_HASH_PREFIX = b',"hash":"'
_SUFFIX_LEN = len(_HASH_PREFIX) + 64 + 2  # ,"hash":"<64 hex>"}
_HEX = frozenset(b"0123456789abcdef")


class RecordError(ValueError):
    """Raised by parse_line for a line that is not a well-formed record."""


@dataclass(frozen=True, slots=True)
class Record:
    """One parsed line."""

    seq: int
    entry_id: str
    body: dict[str, Any]
    canonical: bytes
    hash: bytes


def genesis(relpath: str) -> bytes:
    """The chain's starting hash for the file at ``relpath`` (relative to the logs directory, ``/``-separated)."""
    return hashlib.sha256(CHAIN_VERSION + relpath.encode()).digest()


def encode(body: dict[str, Any], prev_hash: bytes) -> tuple[bytes, bytes]:
    """Serialise ``body`` (which must start with ``seq`` and hold no ``hash``) as one chained line.

    Returns the line (with its newline) and the record's hash.
    """
    canonical = orjson.dumps(body)
    hasher = hashlib.sha256(prev_hash)
    hasher.update(canonical)
    digest = hasher.digest()
    return b"".join((memoryview(canonical)[:-1], _HASH_PREFIX, digest.hex().encode(), b'"}\n')), digest


def link(prev_hash: bytes, canonical: bytes) -> bytes:
    """The hash a record with these canonical bytes must carry after ``prev_hash``."""
    return hashlib.sha256(prev_hash + canonical).digest()


def parse_line(line: bytes) -> Record:
    """Parse one line (with or without its newline) into a Record; raises RecordError if malformed.

    Checks the form only; whether the hash links to the previous record is the caller's question.
    """
    if line.endswith(b"\n"):
        line = line[:-1]
    if len(line) < _SUFFIX_LEN + 2 or not line.endswith(b'"}'):
        raise RecordError("not a record line")
    split = len(line) - _SUFFIX_LEN
    hex_part = line[split + len(_HASH_PREFIX) : -2]
    if line[split : split + len(_HASH_PREFIX)] != _HASH_PREFIX or not _HEX.issuperset(hex_part):
        raise RecordError("no hash member at the end of the line")
    canonical = line[:split] + b"}"
    try:
        body = orjson.loads(canonical)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RecordError("not a JSON object")
    seq, entry_id = body.get("seq"), body.get("id")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1 or not isinstance(entry_id, str):
        raise RecordError("missing seq or id")
    return Record(seq, entry_id, body, canonical, bytes.fromhex(hex_part.decode()))


def stream_id_key(entry_id: str) -> tuple[int, int]:
    """Sort key of a stream entry id (``1732450000000-3`` -> (1732450000000, 3))."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)

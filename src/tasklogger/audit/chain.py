"""Checking one chained JSONL file (pure, over its bytes), and reading a file's last record cheaply.

Problems are located at the line they are found on. The stored hash of each record anchors the next link, so
one changed record is reported once, at its own line, not as a cascade over the rest of the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .. import records

#: Kinds of problem the verifier reports (docs/audit.md explains each).
CHANGED = "changed"
MISSING = "missing"
REORDERED = "reordered"
TRUNCATED = "truncated"
EXTRA = "extra"
UNSEALED_CHANGE = "unsealed_change"
UNSEALED = "unsealed"
TASK_DIRECTORY_MISSING = "task_directory_missing"
SIGNATURE = "signature"


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding: where (task, file relative to the logs directory, 1-based line or None) and what."""

    task: str | None
    file: str | None
    line: int | None
    kind: str
    detail: str

    def text(self) -> str:
        """One human-readable line."""
        where = self.file or "-"
        if self.line is not None:
            where += f":{self.line}"
        return f"{self.task or '-'}  {where}  {self.kind}: {self.detail}"


@dataclass(slots=True)
class Chain:
    """What a file's chain holds: records by seq (as stored), the last line's record and the file's line count."""

    relpath: str
    by_seq: dict[int, records.Record] = field(default_factory=dict)
    line_of: dict[int, int] = field(default_factory=dict)
    lines: int = 0
    last: records.Record | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def count(self) -> int:
        """Records in the file (by the last line's seq, which is what a digest or checkpoint recorded)."""
        return self.last.seq if self.last is not None else 0


def check_chain(task: str | None, relpath: str, data: bytes) -> Chain:
    """Check every line of a chained JSONL file: well-formed, seq 1..n in order, each hash linked to the previous."""
    chain = Chain(relpath)
    problem = chain.problems.append
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    parsed: list[tuple[int, records.Record]] = []
    for lineno, line in enumerate(lines, start=1):
        try:
            record = records.parse_line(line)
        except records.RecordError as exc:
            problem(Problem(task, relpath, lineno, CHANGED, f"not a valid record ({exc})"))
            continue
        parsed.append((lineno, record))
    chain.lines = len(lines)
    if tail:
        problem(Problem(task, relpath, len(lines) + 1, TRUNCATED, "partial last line (no newline)"))
    seen: set[int] = set()
    for lineno, record in parsed:
        if record.seq in seen:
            problem(Problem(task, relpath, lineno, EXTRA, f"a second record with seq {record.seq}"))
            continue
        seen.add(record.seq)
        chain.by_seq[record.seq] = record
        chain.line_of[record.seq] = lineno
    _check_order(task, relpath, parsed, chain)
    for seq, record in chain.by_seq.items():
        prev = records.genesis(relpath) if seq == 1 else (p.hash if (p := chain.by_seq.get(seq - 1)) else None)
        if prev is not None and records.link(prev, record.canonical) != record.hash:
            problem(Problem(task, relpath, chain.line_of[seq], CHANGED, f"record seq {seq} does not match its hash"))
    if parsed:
        chain.last = parsed[-1][1]
    return chain


def _check_order(task: str | None, relpath: str, parsed: list[tuple[int, records.Record]], chain: Chain) -> None:
    """Deleted records show as a gap in seq, swapped ones as a seq out of place (one finding per file)."""
    present = set(chain.by_seq)
    expected = 1
    for lineno, record in parsed:
        if record.seq == expected:
            expected += 1
            continue
        if record.seq > expected and expected in present:
            chain.problems.append(
                Problem(task, relpath, lineno, REORDERED, f"record seq {record.seq} where seq {expected} belongs")
            )
            return
        if record.seq > expected:
            gap = str(expected) if record.seq == expected + 1 else f"{expected}..{record.seq - 1}"
            chain.problems.append(Problem(task, relpath, lineno, MISSING, f"record seq {gap} deleted before this line"))
            expected = record.seq + 1


def head_problem(
    task: str | None, chain: Chain | None, count: int, head: str, what: str, *, extra_kind: str | None
) -> Problem | None:
    """Compare a file with a recorded head (``count`` records ending in hash ``head``, recorded by ``what``).

    Fewer records is a truncation; a different record at ``count`` is a change; more records is reported as
    ``extra_kind`` (None when more records are legitimate, e.g. a running task after a checkpoint).
    """
    relpath = chain.relpath if chain else None
    have = chain.count if chain else 0
    if chain is None or have < count:
        line = (chain.lines + 1) if chain else None
        return Problem(task, relpath, line, TRUNCATED, f"{have} records, {what} recorded {count}")
    record = chain.by_seq.get(count)
    if count and (record is None or record.hash.hex() != head):
        line = chain.line_of.get(count)
        return Problem(task, relpath, line, CHANGED, f"record seq {count} differs from the head {what} recorded")
    if have > count and extra_kind is not None:
        line = chain.line_of.get(count + 1)
        return Problem(task, relpath, line, extra_kind, f"{have - count} records after the {count} {what} recorded")
    return None


def last_line(dir_fd: int, name: str, size: int | None = None) -> bytes | None:
    """The last complete line of ``name`` (without reading the whole file); None if absent, empty or a symlink."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        end = os.fstat(fd).st_size if size is None else size
        buf = b""
        pos = end
        while pos > 0:
            start = max(0, pos - 8192)
            buf = os.pread(fd, pos - start, start) + buf
            pos = start
            complete = buf[: buf.rfind(b"\n") + 1] if b"\n" in buf else b""
            if complete:
                body = complete[:-1]
                cut = body.rfind(b"\n")
                if cut >= 0 or pos == 0:
                    return body[cut + 1 :]
        return None
    finally:
        os.close(fd)

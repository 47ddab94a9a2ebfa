"""The offline verifier: every chain, digest and checkpoint of a logs directory or an evidence bundle.

It needs no Redis and no service, only the files (and, to check signatures, the public key). It reads through a
``Source``, so a logs directory and a bundle are checked by the same code.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .. import records
from ..errors import UnsafeTaskId
from ..fsio import DIR_FLAGS, read_file
from ..projector import FINAL_RESULT, STATE_DIR_NAME, TASK_FILES
from ..wire import check_name
from .chain import (
    CHANGED,
    EXTRA,
    MISSING,
    SIGNATURE,
    TASK_DIRECTORY_MISSING,
    UNSEALED,
    UNSEALED_CHANGE,
    Chain,
    Problem,
    check_chain,
    head_problem,
)
from .checkpoints import CHECKPOINT_TYPE, CHECKPOINTS_REL
from .digests import DIGEST_TYPE, DIGESTS
from .signing import check_signature

DEAD_LETTERS_REL = f"{STATE_DIR_NAME}/dead-letters.jsonl"
#: Every name the store may leave in a task directory (temp files of an interrupted view replacement aside).
KNOWN_FILES = frozenset((*TASK_FILES, DIGESTS))


class Source(Protocol):
    """Where the verifier reads from."""

    def task_ids(self) -> list[str]:
        """Every task directory present."""

    def task_files(self, task_id: str) -> dict[str, bytes | None] | None:
        """The files of a task directory by name (None for an entry that is not a regular file); None when the
        directory does not exist."""

    def read(self, relpath: str) -> bytes | None:
        """A file of the reserved directory (``.tasklogger/...``); None when absent."""


class DirSource:
    """A logs directory; files are opened relative to it without following symlinks."""

    def __init__(self, logs_dir: Path) -> None:
        self.logs_dir = logs_dir

    def task_ids(self) -> list[str]:
        out = []
        with os.scandir(self.logs_dir) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                    continue
                try:
                    check_name(entry.name)
                except UnsafeTaskId:
                    continue
                out.append(entry.name)
        return sorted(out)

    def task_files(self, task_id: str) -> dict[str, bytes | None] | None:
        root = os.open(self.logs_dir, DIR_FLAGS & ~os.O_NOFOLLOW)
        try:
            dir_fd = os.open(task_id, DIR_FLAGS, dir_fd=root)
        except OSError:
            return None
        finally:
            os.close(root)
        try:
            out: dict[str, bytes | None] = {}
            for name in os.listdir(dir_fd):
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                out[name] = read_file(dir_fd, name) if stat.S_ISREG(st.st_mode) else None  # never followed
            return out
        finally:
            os.close(dir_fd)

    def read(self, relpath: str) -> bytes | None:
        path = self.logs_dir / relpath
        if path.is_symlink() or not path.is_file():
            return None
        return path.read_bytes()


@dataclass
class Report:
    """What a verification found."""

    tasks: int = 0
    files: int = 0
    records: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _seen: set[Problem] = field(default_factory=set, repr=False)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    def summary(self) -> str:
        """The summary line."""
        return f"{self.tasks} tasks, {self.files} files, {self.records} records verified"

    def as_json(self) -> dict[str, Any]:
        """The report as one JSON object (``--json``)."""
        return {
            "ok": self.ok,
            "tasks": self.tasks,
            "files": self.files,
            "records": self.records,
            "problems": [
                {"task": p.task, "file": p.file, "line": p.line, "kind": p.kind, "detail": p.detail}
                for p in self.problems
            ],
            "notes": self.notes,
        }

    def add(self, problem: Problem | None) -> None:
        """Record a problem once."""
        if problem is not None and problem not in self._seen:
            self._seen.add(problem)
            self.problems.append(problem)


@dataclass
class _Covered:
    """The latest checkpoint entry of one file."""

    line: int
    entry: dict[str, Any]


@dataclass
class Verifier:
    """Checks a source; ``run`` returns the report."""

    source: Source
    public_key: Ed25519PublicKey | None = None
    #: A bundle holds only the checkpoints that cover its task: each is checked on its own, not as a full chain.
    partial_checkpoints: bool = False
    report: Report = field(default_factory=Report)
    #: The latest checkpoint entry of each file, by task (the reserved directory's name for dead letters), then name.
    heads: dict[str, dict[str, _Covered]] = field(default_factory=dict)
    views: dict[str, dict[str, _Covered]] = field(default_factory=dict)

    def run(self, task_ids: list[str] | None = None, progress: Callable[[int, int], None] | None = None) -> Report:
        """Verify the checkpoints, the dead letters and the tasks (all, or ``task_ids``)."""
        self._checkpoints()
        if task_ids is None:
            mentioned = set(self.heads) | set(self.views)
            task_ids = sorted(set(self.source.task_ids()) | (mentioned - {STATE_DIR_NAME}))
            self._dead_letters()
        for n, task_id in enumerate(task_ids, start=1):
            self._task(task_id)
            if progress is not None:
                progress(n, len(task_ids))
        return self.report

    # -- the checkpoint chain -------------------------------------------------------------------------------

    def _checkpoints(self) -> None:
        data = self.source.read(CHECKPOINTS_REL)
        if data is None:
            if self.partial_checkpoints:
                self.report.notes.append("no checkpoint covers this task yet (it was exported soon after it began)")
            elif self.source.task_ids():
                detail = "the checkpoint chain is gone (a service writes it when it starts)"
                self.report.add(Problem(None, CHECKPOINTS_REL, None, MISSING, detail))
            return
        self.report.files += 1
        if self.partial_checkpoints:
            entries = self._standalone(CHECKPOINTS_REL, data, "prev_checkpoint")
        else:
            chain = check_chain(None, CHECKPOINTS_REL, data)
            self._count(chain)
            entries = self._linked(chain, "prev_checkpoint")
        for line, body in entries:
            if body.get("type") != CHECKPOINT_TYPE:
                self.report.add(Problem(None, CHECKPOINTS_REL, line, CHANGED, "not a checkpoint record"))
                continue
            for relpath, entry in (body.get("heads") or {}).items():
                task, _, name = relpath.partition("/")
                self.heads.setdefault(task, {})[name] = _Covered(line, entry)
            for relpath, entry in (body.get("views") or {}).items():
                task, _, name = relpath.partition("/")
                self.views.setdefault(task, {})[name] = _Covered(line, entry)

    def _linked(self, chain: Chain, prev_member: str) -> list[tuple[int, dict[str, Any]]]:
        """The records of a full chain in seq order, each checked for its ``prev_*`` member and its signature."""
        out = []
        prev: records.Record | None = None
        for seq in sorted(chain.by_seq):
            record, line = chain.by_seq[seq], chain.line_of[seq]
            want = prev.hash.hex() if prev is not None else None
            if record.body.get(prev_member) != want:
                detail = f"{prev_member} does not name the previous record"
                self.report.add(Problem(None, chain.relpath, line, CHANGED, detail))
            self._signature(chain.relpath, line, record)
            out.append((line, record.body))
            prev = record
        return out

    def _standalone(self, relpath: str, data: bytes, prev_member: str) -> list[tuple[int, dict[str, Any]]]:
        """Records taken out of a chain: each must link to the hash its ``prev_*`` member names."""
        out = []
        for line, raw in enumerate(data.splitlines(), start=1):
            try:
                record = records.parse_line(raw)
            except records.RecordError as exc:
                self.report.add(Problem(None, relpath, line, CHANGED, f"not a valid record ({exc})"))
                continue
            self.report.records += 1
            prev_hex = record.body.get(prev_member)
            try:
                prev = bytes.fromhex(prev_hex) if isinstance(prev_hex, str) else records.genesis(relpath)
            except ValueError:
                prev = b""
            if record.seq == 1 and prev_hex is not None or records.link(prev, record.canonical) != record.hash:
                self.report.add(
                    Problem(None, relpath, line, CHANGED, f"record seq {record.seq} does not match its hash")
                )
                continue
            self._signature(relpath, line, record)
            out.append((line, record.body))
        return out

    def _signature(self, relpath: str, line: int, record: records.Record) -> None:
        wrong = check_signature(record.canonical, record.body, self.public_key)
        if wrong is not None:
            task = relpath.split("/", 1)[0] if not relpath.startswith(STATE_DIR_NAME) else None
            self.report.add(Problem(task, relpath, line, SIGNATURE, wrong))

    def _dead_letters(self) -> None:
        data = self.source.read(DEAD_LETTERS_REL)
        if data is not None:
            self.report.files += 1
            chain = check_chain(None, DEAD_LETTERS_REL, data)
            self._count(chain)
        covered = self.heads.get(STATE_DIR_NAME, {}).get(DEAD_LETTERS_REL.split("/", 1)[1])
        if covered is not None and (recorded := _recorded(covered.entry)) is not None:
            what = f"checkpoint line {covered.line}"
            found = chain if data is not None else None
            self.report.add(head_problem(None, found, *recorded, what, extra_kind=None))

    def _count(self, chain: Chain) -> None:
        self.report.records += len(chain.by_seq)
        for p in chain.problems:
            self.report.add(p)

    # -- one task ---------------------------------------------------------------------------------------------

    def _task(self, task_id: str) -> None:
        files = self.source.task_files(task_id)
        prefix = f"{task_id}/"
        if files is None:
            lines = [c.line for c in (*self.heads.get(task_id, {}).values(), *self.views.get(task_id, {}).values())]
            detail = f"checkpoints recorded its files from line {min(lines)}" if lines else "it was named"
            self.report.add(Problem(task_id, task_id, None, TASK_DIRECTORY_MISSING, detail))
            return
        self.report.tasks += 1
        chains: dict[str, Chain] = {}
        present: dict[str, bytes] = {}
        for name, content in sorted(files.items()):
            relpath = prefix + name
            if content is None:
                self.report.add(Problem(task_id, relpath, None, EXTRA, "not a regular file (never followed)"))
                continue
            if name not in KNOWN_FILES and not (name.startswith(".") and name.endswith(".tmp")):
                self.report.add(Problem(task_id, relpath, None, EXTRA, "a file the service never writes"))
                continue
            present[name] = content
            self.report.files += 1
            if name.endswith(".jsonl"):
                chains[name] = check_chain(task_id, relpath, content)
                self._count(chains[name])
        self._digests(task_id, present, chains)
        self._coverage(task_id, present, chains)

    def _digests(self, task_id: str, files: dict[str, bytes], chains: dict[str, Chain]) -> None:
        chain = chains.get(DIGESTS)
        digests = self._linked(chain, "prev_digest") if chain is not None else []
        if not digests:
            if FINAL_RESULT in files:
                detail = "the task has ended (04-final-result.json) but was never sealed"
                self.report.add(Problem(task_id, f"{task_id}/{DIGESTS}", None, UNSEALED, detail))
            return
        for line, body in digests:
            if body.get("type") != DIGEST_TYPE or body.get("task_id") != task_id:
                self.report.add(Problem(task_id, f"{task_id}/{DIGESTS}", line, CHANGED, "not a digest of this task"))
        self._last_digest(task_id, files, chains, *digests[-1])
        # Earlier digests: what they sealed must still be a prefix of each chain.
        for line, body in digests[:-1]:
            for name, entry in _files_of(body).items():
                if name in chains and (recorded := _recorded(entry)) is not None and recorded[0]:
                    what = f"the digest at line {line}"
                    self.report.add(head_problem(task_id, chains[name], *recorded, what, extra_kind=None))

    def _last_digest(
        self, task_id: str, files: dict[str, bytes], chains: dict[str, Chain], last_line: int, last: dict[str, Any]
    ) -> None:
        """The task's files now must be exactly what its last digest sealed."""
        what = f"the last digest (line {last_line})"
        sealed = _files_of(last)
        for name, entry in sealed.items():
            relpath = f"{task_id}/{name}"
            if name not in files:
                self.report.add(Problem(task_id, relpath, None, MISSING, f"the file is gone; {what} sealed it"))
            elif name in chains and (recorded := _recorded(entry)) is not None:
                self.report.add(head_problem(task_id, chains[name], *recorded, what, extra_kind=UNSEALED_CHANGE))
            elif not isinstance(entry, dict) or hashlib.sha256(files[name]).hexdigest() != entry.get("sha256"):
                detail = f"changed after the seal: its SHA-256 differs from {what}"
                self.report.add(Problem(task_id, relpath, None, CHANGED, detail))
        for name in files:
            if name in TASK_FILES and name not in sealed:
                detail = f"created after the seal: {what} does not list it"
                self.report.add(Problem(task_id, f"{task_id}/{name}", None, UNSEALED_CHANGE, detail))

    def _coverage(self, task_id: str, files: dict[str, bytes], chains: dict[str, Chain]) -> None:
        """Files the checkpoints recorded must still hold what was recorded (running tasks included)."""
        prefix = f"{task_id}/"
        heads = self.heads.get(task_id, {})
        moved = any(name not in heads for name in chains)
        for name, covered in heads.items():
            relpath = prefix + name
            what = f"the checkpoint at line {covered.line}"
            if name not in files:
                detail = f"the file is gone; {what} recorded {covered.entry.get('records')} records"
                self.report.add(Problem(task_id, relpath, None, MISSING, detail))
                continue
            chain = chains.get(name)
            recorded = _recorded(covered.entry)
            if recorded is None:
                self.report.add(Problem(None, CHECKPOINTS_REL, covered.line, CHANGED, f"malformed entry for {relpath}"))
                continue
            self.report.add(head_problem(task_id, chain, *recorded, what, extra_kind=None))
            if chain is not None and chain.count != recorded[0]:
                moved = True
        if moved:
            return  # views may legitimately have changed since; the next checkpoint or the digest covers them
        for name, covered in self.views.get(task_id, {}).items():
            if covered.entry is None:
                continue
            relpath = prefix + name
            content = files.get(name)
            if content is None:
                self.report.add(
                    Problem(task_id, relpath, None, MISSING, f"the checkpoint at line {covered.line} recorded it")
                )
            elif hashlib.sha256(content).hexdigest() != covered.entry.get("sha256"):
                detail = f"changed since the checkpoint at line {covered.line} with no record appended after it"
                self.report.add(Problem(task_id, relpath, None, CHANGED, detail))


def _files_of(digest: dict[str, Any]) -> dict[str, Any]:
    """A digest's ``files`` member, or nothing when it is not an object (the chain check reports the damage)."""
    files = digest.get("files")
    return files if isinstance(files, dict) else {}


def _recorded(entry: Any) -> tuple[int, str] | None:
    """(records, head) of a checkpoint entry, or None when it is not well formed."""
    if not isinstance(entry, dict):
        return None
    count, head = entry.get("records"), entry.get("head")
    if not isinstance(count, int) or isinstance(count, bool) or not isinstance(head, str | None):
        return None
    return count, head or ""


def verify_logs_dir(
    logs_dir: Path,
    *,
    public_key: Ed25519PublicKey | None = None,
    task_ids: Iterable[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Verify a logs directory (all tasks, or ``task_ids``)."""
    verifier = Verifier(DirSource(logs_dir), public_key)
    return verifier.run(list(task_ids) if task_ids is not None else None, progress)


def known_task(logs_dir: Path, task_id: str) -> bool:
    """Whether a task has a directory or is named by a checkpoint (so its absence is a finding, not a typo)."""
    if (logs_dir / task_id).is_dir():
        return True
    data = DirSource(logs_dir).read(CHECKPOINTS_REL)
    return data is not None and f'"{task_id}/'.encode() in data

"""Evidence bundles: one task's files, its digests, the checkpoint records that cover it, the public key if any,
and a manifest, as a ``.tar.gz`` that ``tasklogger verify --bundle`` checks on another machine.

Members keep their paths relative to the logs directory (``{task}/03-agent-output.jsonl``,
``.tasklogger/checkpoints.jsonl``) because each chain's genesis is bound to that path.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import time
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .. import __version__, records
from ..reader import TaskNotFound
from ..wire import check_name
from .chain import CHANGED, EXTRA, MISSING, Problem
from .checkpoints import CHECKPOINTS_REL
from .digests import now_iso
from .signing import KeyFileError, key_id, parse_public_key
from .verify import KNOWN_FILES, DirSource, Report, Verifier

FORMAT = "tasklogger-evidence-v1"
MANIFEST = "manifest.json"
PUBLIC_KEY = "signing-key.pub"
#: A bundle larger than this is refused rather than read into memory.
MAX_BUNDLE_BYTES = 4 << 30


class BundleError(ValueError):
    """Raised when a file is not a readable evidence bundle."""


def export_bundle(logs_dir: Path, task_id: str, public_pem: bytes | None = None) -> bytes:
    """The evidence bundle of one task as ``.tar.gz`` bytes; raises UnsafeTaskId or TaskNotFound."""
    check_name(task_id)
    source = DirSource(logs_dir)
    files = source.task_files(task_id)
    if files is None:
        raise TaskNotFound(task_id)
    members: dict[str, bytes] = {
        f"{task_id}/{name}": content
        for name, content in sorted(files.items())
        if content is not None and name in KNOWN_FILES
    }
    covering = checkpoint_lines(source.read(CHECKPOINTS_REL) or b"", task_id)
    if covering:
        members[CHECKPOINTS_REL] = covering
    if public_pem is not None:
        members[PUBLIC_KEY] = public_pem
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "task_id": task_id,
        "exported_at": now_iso(),
        "tasklogger_version": __version__,
        "public_key_id": key_id(parse_public_key(public_pem, PUBLIC_KEY)) if public_pem else None,
        "checkpoints": covering.count(b"\n"),
        "files": {
            path: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)} for path, data in members.items()
        },
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        _add(tar, MANIFEST, orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
        for path, data in members.items():
            _add(tar, path, data)
    return out.getvalue()


def checkpoint_lines(data: bytes, task_id: str) -> bytes:
    """The checkpoint records (whole lines, verbatim) that name one of the task's files."""
    prefix = f"{task_id}/"
    needle = f'"{prefix}'.encode()
    out = []
    for line in data.splitlines(keepends=True):
        if needle not in line or not line.endswith(b"\n"):
            continue
        try:
            body = records.parse_line(line).body
        except records.RecordError:
            continue
        named = (*(body.get("heads") or {}), *(body.get("views") or {}))
        if any(str(rel).startswith(prefix) for rel in named):
            out.append(line)
    return b"".join(out)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))


class BundleSource:
    """A bundle's members, read into memory (the task's files are small next to a logs directory)."""

    def __init__(self, members: dict[str, bytes], task_id: str) -> None:
        self.members = members
        self.task_id = task_id

    def task_ids(self) -> list[str]:
        return [self.task_id]

    def task_files(self, task_id: str) -> dict[str, bytes | None] | None:
        prefix = f"{task_id}/"
        files: dict[str, bytes | None] = {p[len(prefix) :]: d for p, d in self.members.items() if p.startswith(prefix)}
        return files or None

    def read(self, relpath: str) -> bytes | None:
        return self.members.get(relpath)


def read_bundle(path: Path) -> dict[str, bytes]:
    """Every regular-file member of a bundle by name; raises BundleError for anything unsafe or unreadable."""
    try:
        if path.stat().st_size > MAX_BUNDLE_BYTES:
            raise BundleError(f"{path} is larger than {MAX_BUNDLE_BYTES} bytes")
        members: dict[str, bytes] = {}
        with tarfile.open(path, mode="r:gz") as tar:
            for info in tar:
                parts = info.name.split("/")
                if not info.isfile() or info.name.startswith("/") or ".." in parts or len(parts) > 2:
                    raise BundleError(f"{path}: unexpected member {info.name!r}")
                handle = tar.extractfile(info)
                assert handle is not None
                members[info.name] = handle.read()
        return members
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise BundleError(f"{path} is not a readable .tar.gz bundle: {exc}") from None


def verify_bundle(path: Path, public_key: Ed25519PublicKey | None = None) -> Report:
    """Verify an evidence bundle: its manifest, the task's chains and digests, the covering checkpoints."""
    members = read_bundle(path)
    try:
        manifest = orjson.loads(members.pop(MANIFEST))
        task_id = manifest["task_id"]
        listed: dict[str, Any] = manifest["files"]
        if manifest.get("format") != FORMAT or not isinstance(task_id, str) or not isinstance(listed, dict):
            raise ValueError
        check_name(task_id)
    except (KeyError, ValueError, TypeError):
        raise BundleError(f"{path} has no valid {MANIFEST}") from None
    report = Report()
    for name, data in sorted(members.items()):
        entry = listed.get(name)
        if entry is None:
            report.add(Problem(task_id, name, None, EXTRA, f"not listed in {MANIFEST}"))
        elif hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            report.add(Problem(task_id, name, None, CHANGED, f"differs from its SHA-256 in {MANIFEST}"))
    for name in listed:
        if name not in members:
            report.add(Problem(task_id, name, None, MISSING, f"listed in {MANIFEST} but not in the bundle"))
    key_pem = members.pop(PUBLIC_KEY, None)
    if public_key is None and key_pem is not None:
        try:
            public_key = parse_public_key(key_pem, PUBLIC_KEY)
        except KeyFileError as exc:
            report.add(Problem(task_id, PUBLIC_KEY, None, CHANGED, str(exc)))
        else:
            report.notes.append(
                f"signatures checked against the key shipped in the bundle (key id {key_id(public_key)}); "
                "pass --public-key to check them against a key you trust"
            )
    verifier = Verifier(BundleSource(members, task_id), public_key, partial_checkpoints=True, report=report)
    return verifier.run([task_id])

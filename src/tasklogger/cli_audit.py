"""``tasklogger verify``, ``export`` and ``keygen``: the audit trail from the command line, offline.

None of them needs Redis or a running service. Exit codes: 0 all intact, 1 tampering or damage found,
2 usage error (one line on stderr).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import orjson
import typer

from .cli import LogsDirOpt, app
from .config import Settings
from .errors import TaskLoggerError, UnsafeTaskId
from .reader import TaskNotFound
from .wire import check_name

# The audit machinery (cryptography, rich, tar) is imported by the commands that use it: every other command,
# ``tasklogger serve`` first, starts without loading it.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from .audit.verify import Report

#: Directories with more tasks than this get a progress bar (on a terminal).
PROGRESS_MIN_TASKS = 200

PublicKeyOpt = Annotated[
    Path | None, typer.Option("--public-key", help="PEM Ed25519 public key: every signature must verify with it")
]


def _usage(message: str) -> typer.Exit:
    typer.echo(f"tasklogger: {message}", err=True)
    return typer.Exit(2)


def _logs_dir(flag: Path | None) -> Path:
    try:
        logs_dir = Settings.from_env(logs_dir=flag).logs_dir
    except TaskLoggerError as exc:
        raise _usage(str(exc)) from None
    if not logs_dir.is_dir():
        raise _usage(f"logs directory {logs_dir} does not exist")
    return logs_dir


def _public_key(path: Path | None) -> Ed25519PublicKey | None:
    from .audit.signing import KeyFileError, load_public_key

    if path is None:
        return None
    try:
        return load_public_key(path)
    except KeyFileError as exc:
        raise _usage(str(exc)) from None


@app.command()
def verify(
    task_ids: Annotated[list[str] | None, typer.Argument(metavar="[TASK_ID]...", help="only these tasks")] = None,
    logs_dir: LogsDirOpt = None,
    public_key: PublicKeyOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as one JSON object")] = False,
    bundle: Annotated[Path | None, typer.Option("--bundle", help="verify an evidence bundle (.tar.gz)")] = None,
) -> None:
    """Check every hash chain, digest and checkpoint, offline. Exit 0 intact, 1 problems found, 2 usage error."""
    from .audit.bundle import BundleError, verify_bundle
    from .audit.verify import known_task

    key = _public_key(public_key)
    if bundle is not None:
        if task_ids:
            raise _usage("--bundle verifies the bundle's own task; give no TASK_ID")
        try:
            report = verify_bundle(bundle, key)
        except BundleError as exc:
            raise _usage(str(exc)) from None
    else:
        root = _logs_dir(logs_dir)
        for task_id in task_ids or ():
            try:
                check_name(task_id)
            except UnsafeTaskId as exc:
                raise _usage(exc.detail) from None
            if not known_task(root, task_id):
                raise _usage(f"no task {task_id!r} in {root}")
        report = _verify_with_progress(root, key, task_ids or None, show=not as_json)
    _print(report, as_json)
    raise typer.Exit(0 if report.ok else 1)


def _verify_with_progress(root: Path, key: Ed25519PublicKey | None, task_ids: list[str] | None, show: bool) -> Report:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .audit.verify import verify_logs_dir

    console = Console(stderr=True)
    if not show or not console.is_terminal:
        return verify_logs_dir(root, public_key=key, task_ids=task_ids)
    columns = (TextColumn("verifying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        job = bar.add_task("tasks", total=None, visible=False)

        def advance(done: int, total: int) -> None:
            bar.update(job, completed=done, total=total, visible=total >= PROGRESS_MIN_TASKS)

        return verify_logs_dir(root, public_key=key, task_ids=task_ids, progress=advance)


def _print(report: Report, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    for problem in report.problems:
        typer.echo(problem.text())
    for note in report.notes:
        typer.echo(f"note: {note}", err=True)
    verdict = "intact" if report.ok else f"{len(report.problems)} problems"
    typer.echo(f"{report.summary()}: {verdict}")


@app.command()
def export(
    task_id: Annotated[str, typer.Argument(help="the task to export")],
    output: Annotated[Path, typer.Option("-o", "--output", help="the bundle to write (.tar.gz)")],
    logs_dir: LogsDirOpt = None,
    public_key: PublicKeyOpt = None,
) -> None:
    """Write a task's evidence bundle: its files, digests, covering checkpoints, public key and a manifest."""
    from .audit.bundle import export_bundle
    from .audit.signing import KeyFileError, load_public_key, load_signer

    root = _logs_dir(logs_dir)
    pem = None
    if public_key is not None:
        try:
            pem = public_key.read_bytes()
            load_public_key(public_key)
        except (OSError, KeyFileError) as exc:
            raise _usage(f"cannot use public key {public_key}: {exc}") from None
    else:
        try:
            signing_key = Settings.from_env().signing_key
        except TaskLoggerError as exc:
            raise _usage(str(exc)) from None
        if signing_key is not None:
            try:
                pem = load_signer(signing_key).public_pem()
            except KeyFileError as exc:
                raise _usage(str(exc)) from None
    try:
        data = export_bundle(root, task_id, pem)
    except UnsafeTaskId as exc:
        raise _usage(exc.detail) from None
    except TaskNotFound:
        raise _usage(f"no task {task_id!r} in {root}") from None
    try:
        output.write_bytes(data)
    except OSError as exc:
        raise _usage(f"cannot write {output}: {exc.strerror}") from None
    typer.echo(f"{output}: {len(data)} bytes")


@app.command()
def keygen(
    output: Annotated[Path, typer.Option("-o", "--output", help="private key file to create (PEM, mode 0600)")],
) -> None:
    """Create an Ed25519 key pair for signing: OUTPUT (private) and OUTPUT.pub (public, for verify)."""
    from .audit.signing import generate

    try:
        signer = generate(output)
    except FileExistsError:
        raise _usage(f"{output} exists; not overwriting a key") from None
    except OSError as exc:
        raise _usage(f"cannot write {output}: {exc.strerror}") from None
    typer.echo(f"{output} (private, set TASKLOGGER_SIGNING_KEY), {output}.pub (public); key id {signer.key_id}")

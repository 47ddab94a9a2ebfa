"""The ``tasklogger`` command (typer): the body of each command only delegates."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from . import __version__
from .config import Settings
from .errors import TaskLoggerError
from .logs import configure

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Durable audit logs of AI-agent tasks.")

LogsDirOpt = Annotated[Path | None, typer.Option("--logs-dir", help="task directories [env LOGS_DIR]")]
RedisUrlOpt = Annotated[
    str | None, typer.Option("--redis-url", help="Redis to consume [env REDIS_URL; unset: embedded]")
]
HostOpt = Annotated[str | None, typer.Option("--host", help="bind address [env TASKLOGGER_HOST, 127.0.0.1]")]
PortOpt = Annotated[int | None, typer.Option("--port", help="HTTP port [env PORT, 8090]")]


def _settings(**flags: Any) -> Settings:
    settings = Settings.from_env(**flags)
    configure(settings.log_level, settings.log_format)
    return settings


def _fail(exc: TaskLoggerError) -> None:
    typer.echo(f"tasklogger: {exc}", err=True)
    raise typer.Exit(2)


@app.command()
def serve(
    logs_dir: LogsDirOpt = None, redis_url: RedisUrlOpt = None, host: HostOpt = None, port: PortOpt = None
) -> None:
    """Consume the stream and serve the HTTP API in one process (the default deployment)."""
    _write_logs(serve_api=True, logs_dir=logs_dir, redis_url=redis_url, host=host, port=port)


@app.command()
def consume(logs_dir: LogsDirOpt = None, redis_url: RedisUrlOpt = None) -> None:
    """Only consume the stream into the logs directory."""
    _write_logs(serve_api=False, logs_dir=logs_dir, redis_url=redis_url)


def _write_logs(*, serve_api: bool, **flags: Any) -> None:
    """Run the consumer (and the API): the logs directory is opened before the rest of the service is imported,
    so the writer child's own start-up, which the first batch waits for, overlaps those imports."""
    try:
        settings = _settings(**flags)
        from .store import open_store

        store = open_store(settings)
        from .service import run

        run(settings, serve_api=serve_api, store=store)
    except TaskLoggerError as exc:
        _fail(exc)


@app.command()
def api(logs_dir: LogsDirOpt = None, redis_url: RedisUrlOpt = None, host: HostOpt = None, port: PortOpt = None) -> None:
    """Only serve the HTTP API over an existing logs directory (read-only)."""
    from .service import run

    try:
        run(_settings(logs_dir=logs_dir, redis_url=redis_url, host=host, port=port), consume=False)
    except TaskLoggerError as exc:
        _fail(exc)


@app.command()
def reindex(
    logs_dir: LogsDirOpt = None,
    index_path: Annotated[
        Path | None, typer.Option("--index-path", help="index file [env TASKLOGGER_INDEX_PATH]")
    ] = None,
) -> None:
    """Rebuild the task index from the task directories (safe while the service runs: it switches over)."""
    from .indexer import reindex_command

    try:
        reindex_command(_settings(logs_dir=logs_dir, index_path=index_path))
    except TaskLoggerError as exc:
        _fail(exc)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    """Console-script entry point: a usage error is one line on stderr and exit status 2, like every other error."""
    try:
        status = app(standalone_mode=False)  # without standalone mode, an Exit comes back as its status
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        print("tasklogger: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as exc:
        # Usage errors come from the click that typer carries; they all say what is wrong in one message.
        if type(exc).__name__ == "NoArgsIsHelpError":
            raise SystemExit(0) from None  # ``tasklogger`` alone: the help was printed
        message = getattr(exc, "format_message", None)
        if message is None or not isinstance(getattr(exc, "exit_code", None), int):
            raise
        ctx = getattr(exc, "ctx", None)
        where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        print(f"tasklogger: {' '.join(str(message()).split())}{where}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(status if isinstance(status, int) else 0)


from . import cli_audit as _cli_audit  # noqa: E402, F401  (registers verify, export and keygen on ``app``)
from . import cli_client  # noqa: E402, F401  (registers the client commands on ``app``)

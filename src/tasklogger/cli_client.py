"""CLI commands that talk to a running service over HTTP (``tasks``, ``show``, ``tail``, ``dead-letters``) and
``demo``, which publishes sample tasks to the stream. Registered on the ``tasklogger`` typer app.

Task data is untrusted: it is printed as rich ``Text`` (never parsed as markup). Errors end the command with one
line on stderr and exit code 1; ``--json`` prints exactly what the API answered, for scripts.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.table import Table
from rich.text import Text

from .cli import app
from .errors import TaskLoggerError
from .terminal import (
    STATUS_STYLE,
    count,
    data_of,
    flush,
    merged,
    one_line,
    out,
    paired_results,
    print_final,
    print_header,
    print_record,
    print_tools,
    seconds,
    usd,
    when,
)

if TYPE_CHECKING:
    from .client import Client

#: Where the service listens by default (``tasklogger serve`` on this machine).
DEFAULT_URL = "http://127.0.0.1:8090"

UrlOpt = Annotated[str, typer.Option("--url", envvar="TASKLOGGER_URL", help="the service's base URL")]
TokenOpt = Annotated[
    str | None, typer.Option("--token", envvar="TASKLOGGER_API_TOKEN", help="API token, if the service needs one")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the API's JSON instead of a table")]


def check_range(name: str, value: float, low: float, high: float) -> None:
    """Bad input ends the command with one line (typer's own range errors print a box)."""
    if not low <= value <= high:
        fail(f"{name} must be between {low:g} and {high:g}, not {value:g}", 2)


def fail(message: str, code: int = 1) -> None:
    """End the command with one line on stderr."""
    typer.echo(f"tasklogger: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def connect(url: str, token: str | None) -> Iterator[Client]:
    """A client for the command; any API failure ends the command with its one-line message."""
    # Imported here: the service's own commands (serve, consume) never load the HTTP client.
    from .client import ApiError, Client

    client = Client(url, token)
    try:
        yield client
    except ApiError as exc:
        fail(str(exc))
    finally:
        client.close()


def print_json(value: Any) -> None:
    """Compact JSON on stdout, one document per line (valid UTF-8, for jq and friends)."""
    sys.stdout.buffer.write(orjson.dumps(value) + b"\n")
    sys.stdout.flush()


# -- tasks --------------------------------------------------------------------------------------------------------


@app.command("tasks")
def tasks_command(
    status: Annotated[str | None, typer.Option(help="running, completed or failed")] = None,
    source: Annotated[str | None, typer.Option(help="github, jira, slack, ...")] = None,
    agent: Annotated[str | None, typer.Option(help="agent type")] = None,
    user: Annotated[str | None, typer.Option(help="user id")] = None,
    since: Annotated[str | None, typer.Option(help="created at or after (ISO-8601 or epoch seconds)")] = None,
    until: Annotated[str | None, typer.Option(help="created before (ISO-8601 or epoch seconds)")] = None,
    search: Annotated[str | None, typer.Option("--search", "-q", help="full-text search")] = None,
    sort: Annotated[str | None, typer.Option(help="e.g. -created_at (default), -cost_usd, duration_seconds")] = None,
    limit: Annotated[int, typer.Option(help="rows per page (1-500)")] = 50,
    cursor: Annotated[str | None, typer.Option(help="the next_cursor of a previous page")] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    json: JsonOpt = False,
) -> None:
    """List tasks, newest first, with filters and full-text search."""
    if status is not None and status not in STATUS_STYLE:
        fail(f"--status must be running, completed or failed, not {status!r}", 2)
    check_range("--limit", limit, 1, 500)
    with connect(url, token) as client:
        page = client.tasks(status=status, source=source, agent=agent, user=user, since=since, until=until,
                            q=search, sort=sort, limit=limit, cursor=cursor)  # fmt: skip
    if json:
        print_json(page)
        return
    rows = [
        [
            Text(str(task.get("status") or "?"), STATUS_STYLE.get(str(task.get("status")), "")),
            Text(str(task.get("task_id"))),
            Text(str(task.get("source") or "—")),
            Text(str(task.get("agent_type") or "—")),
            Text(when(task.get("created_at"))),
            Text(seconds(task.get("duration_seconds"))),
            Text(usd(task.get("cost_usd"))),
            Text(f"{count(task.get('input_tokens'))} / {count(task.get('output_tokens'))}"),
            Text(one_line(task.get("message") or "", 60), "dim"),
        ]
        for task in page["tasks"]
    ]
    table = Table(box=None, header_style="bold", pad_edge=False)
    names = ("status", "task", "source", "agent", "created (UTC)", "duration", "cost", "tokens in/out", "prompt")
    for n, name in enumerate(names):
        # Every column keeps its full width (ids are never cut); only the prompt gives way on a narrow terminal.
        widest = max([len(name), *(row[n].cell_len for row in rows)])
        table.add_column(name, justify="right" if 5 <= n <= 7 else "left", no_wrap=True, overflow="ellipsis",
                         min_width=None if name == "prompt" else widest)  # fmt: skip
    for row in rows:
        table.add_row(*row)
    if not page["tasks"]:
        out.print("No tasks match." + ("" if any((status, source, agent, user, search)) else " Try `tasklogger demo`."))
        return
    out.print(table)
    if page.get("next_cursor"):
        out.print(Text(f"more: --cursor {page['next_cursor']}", "dim"))


# -- show / tail --------------------------------------------------------------------------------------------------


@app.command("show")
def show_command(
    task_id: Annotated[str, typer.Argument(metavar="TASK", help="task id")],
    full: Annotated[bool, typer.Option("--full", help="print every body in full")] = False,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    json: JsonOpt = False,
) -> None:
    """One task: its header, the timeline of every step, cost per tool and the final result."""
    with connect(url, token) as client:
        logs = client.logs(task_id)
    if json:
        print_json(logs)
        return
    print_header(task_id, logs.get("metadata") or {}, logs.get("final_result"))
    records = merged(logs)
    results = paired_results(records)
    for file, record in records:
        if id(record) in results.consumed:
            continue
        print_record(file, record, full=full, result=results.by_call.get(id(record)))
    print_tools(records)
    final = logs.get("final_result")
    if final:
        print_final(final)
    else:
        out.print(Text("still running — follow it with: tasklogger tail " + task_id, "blue"))


@app.command("tail")
def tail_command(
    task_id: Annotated[str, typer.Argument(metavar="TASK", help="task id")],
    wait: Annotated[bool, typer.Option("--wait", help="wait for a task that does not exist yet")] = False,
    after: Annotated[str | None, typer.Option(help="start after this stream entry id")] = None,
    full: Annotated[bool, typer.Option("--full", help="print every body in full")] = False,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    json: JsonOpt = False,
) -> None:
    """Follow a task live: each step as it is written, until its final result (resumes if the service restarts)."""
    from .client import ApiError

    with connect(url, token) as client:
        try:
            for event in client.events(task_id, after=after, wait=wait):
                follow(event.event, event.id, event.data if isinstance(event.data, dict) else {}, json, full)
        except ApiError as exc:
            if exc.status == 404:
                fail(f"no task {task_id!r} yet (tail --wait waits for it)")
            raise


def follow(kind: str, entry_id: str | None, data: dict[str, Any], json: bool, full: bool) -> None:
    """Print one event of ``tail``: a record as it is written, or the final result."""
    if kind == "end":
        if json:
            print_json({"end": data})
        else:
            print_final(data)
    elif kind == "record":
        if json:
            print_json({"id": entry_id, **data})
        else:
            print_record(str(data.get("file", "")), data.get("record") or {}, full=full)
            flush()


# -- dead letters -------------------------------------------------------------------------------------------------


@app.command("dead-letters")
def dead_letters_command(
    reason: Annotated[str | None, typer.Option(help="only this reason, e.g. invalid_data")] = None,
    after: Annotated[str | None, typer.Option(help="start after this stream entry id")] = None,
    limit: Annotated[int, typer.Option(help="entries per page (1-1000)")] = 100,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    json: JsonOpt = False,
) -> None:
    """Entries that could not be understood, with the reason (they are kept, never dropped)."""
    check_range("--limit", limit, 1, 1000)
    with connect(url, token) as client:
        page = client.dead_letters(reason=reason, after=after, limit=limit)
    if json:
        print_json(page)
        return
    letters = page.get("dead_letters") or []
    if not letters:
        out.print("No dead letters" + (f" with reason {reason}." if reason else "."))
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("stream id", "reason", "type", "dead-lettered (UTC)", "detail"):
        table.add_column(name, no_wrap=name != "detail", overflow="fold")
    for letter in letters:
        fields = data_of(letter, "fields")
        table.add_row(
            Text(str(letter.get("id"))),
            Text(str(letter.get("reason")), "red"),
            Text(str(fields.get("type", "—"))),
            Text(when(letter.get("dead_lettered_at"))),
            Text(one_line(str(letter.get("detail") or ""), 100), "dim"),
        )
    out.print(table)
    if page.get("next_after"):
        out.print(Text(f"more: --after {page['next_after']}", "dim"))


# -- demo ---------------------------------------------------------------------------------------------------------


@app.command("demo")
def demo_command(
    tasks: Annotated[int, typer.Option(help="how many sample tasks (1-50)")] = 3,
    speed: Annotated[float, typer.Option(help="1 = a real agent's pace; 10 = ten times faster (0.1-10000)")] = 1.0,
    redis_url: Annotated[
        str | None, typer.Option("--redis-url", help="[env REDIS_URL; unset: the embedded one]")
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    json: JsonOpt = False,
) -> None:
    """Publish realistic sample tasks to the stream, paced like a real agent: watch them appear live."""
    check_range("--tasks", tasks, 1, 50)
    check_range("--speed", speed, 0.1, 10_000)
    import redis

    from . import demo
    from .config import Settings

    try:
        settings = Settings.from_env(redis_url=redis_url)
    except TaskLoggerError as exc:
        fail(str(exc), 2)
    target = settings.redis_url or f"redis://127.0.0.1:{settings.embedded_redis_port}/0"
    client = redis.Redis.from_url(target, socket_timeout=5, socket_connect_timeout=3)
    batch = demo.scripts(tasks)
    started: set[str] = set()

    def on_step(script: demo.Script, kind: str, entry_id: str) -> None:
        if json:
            print_json({"task_id": script.task_id, "type": kind, "id": entry_id})
        elif script.task_id not in started and kind == "task:created":
            started.add(script.task_id)
            out.print(
                Text.assemble("task ", (script.task_id, "bold"), " started: ", f"{url.rstrip('/')}/t/{script.task_id}")
            )

    if not json:
        out.print(f"publishing {tasks} sample task(s) to stream {settings.stream!r} at {target} (Ctrl-C stops)")
    try:
        written = demo.publish(client, settings.stream, batch, speed=speed, on_step=on_step)
    except redis.RedisError as exc:
        fail(f"cannot publish to {target}: {exc}; is `tasklogger serve` (or Redis) running?")
    except KeyboardInterrupt:
        fail("demo interrupted", 130)
    finally:
        client.close()
    if not json:
        out.print(f"done: {written} entries; see them at {url.rstrip('/')}/ or with: tasklogger tasks")

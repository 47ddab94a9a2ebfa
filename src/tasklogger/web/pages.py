"""Server-rendered HTML of the web page. Every value from task data goes through ``esc``: it is untrusted."""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote

from .. import __version__

#: The filters of the task list, as GET /tasks names them.
STATUSES = ("running", "completed", "failed")
SORTS = {
    "-created_at": "newest first",
    "created_at": "oldest first",
    "-updated_at": "recently updated",
    "-cost_usd": "most expensive",
    "-duration_seconds": "longest",
}


def esc(value: Any) -> str:
    """HTML-escape any value (quotes too, so it is safe inside attributes)."""
    return escape("" if value is None else str(value), quote=True)


def layout(title: str, body: str, *, scripts: tuple[str, ...] = (), version: str, auth: bool) -> str:
    """The page frame: head, top bar (with a logout button when a token is required), body, scripts."""
    logout = (
        '<form method="post" action="/logout" class="logout"><button type="submit">Log out</button></form>'
        if auth
        else ""
    )
    tags = "".join(f'<script src="/static/{name}?v={version}" defer></script>' for name in ("common.js", *scripts))
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} · tasklogger</title>
<link rel="icon" href="/static/favicon.svg?v={version}" type="image/svg+xml">
<link rel="stylesheet" href="/static/app.css?v={version}">
{tags}
</head>
<body>
<header class="top"><a class="brand" href="/">tasklogger</a><span class="muted">v{esc(__version__)}</span>
<span class="spacer"></span>{logout}</header>
<main>
{body}
</main>
</body>
</html>
"""


def task_list(params: dict[str, str], *, version: str, auth: bool) -> str:
    """The task list: a filter form (a plain GET, so a filtered view is a link) and the table list.js fills."""
    status_opts = "".join(
        f'<option value="{s}"{" selected" if params.get("status") == s else ""}>{s}</option>' for s in STATUSES
    )
    sort_opts = "".join(
        f'<option value="{k}"{" selected" if params.get("sort", "-created_at") == k else ""}>{esc(v)}</option>'
        for k, v in SORTS.items()
    )

    def field(name: str, label: str, placeholder: str, kind: str = "text") -> str:
        return (
            f'<label>{label}<input type="{kind}" name="{name}" value="{esc(params.get(name, ""))}" '
            f'placeholder="{esc(placeholder)}" autocomplete="off"></label>'
        )

    body = f"""
<form class="filters" method="get" action="/" id="filters">
  <label class="grow">Search{_input("q", params, "words in prompts, outputs, results…", "search")}</label>
  <label>Status<select name="status"><option value="">any</option>{status_opts}</select></label>
  {field("source", "Source", "github, jira…")}
  {field("agent", "Agent", "coding…")}
  {field("user", "User", "user id")}
  <label>Sort<select name="sort">{sort_opts}</select></label>
  <button type="submit">Apply</button>
  <a class="button secondary" href="/">Clear</a>
</form>
<p class="status-line"><span id="list-state" class="live-state">loading…</span> <span id="list-count"></span></p>
<div class="table-wrap">
<table class="tasks" id="tasks">
  <thead><tr><th>Status</th><th>Task</th><th>Source</th><th>Agent</th><th>Created (UTC)</th>
  <th class="num">Duration</th><th class="num">Cost</th><th class="num">Tokens in / out</th><th>Prompt</th></tr></thead>
  <tbody></tbody>
</table>
</div>
<p id="empty" class="empty" hidden>No tasks match. New to tasklogger? Run <code>tasklogger demo</code> and watch
a sample task appear here.</p>
<p><button type="button" id="more" hidden>Load more</button></p>
<noscript><p class="error">The task list needs JavaScript. The same data: <a href="/tasks">/tasks</a>.</p></noscript>
"""
    return layout("Tasks", body, scripts=("list.js",), version=version, auth=auth)


def _input(name: str, params: dict[str, str], placeholder: str, kind: str) -> str:
    value = esc(params.get(name, ""))
    return f'<input type="{kind}" name="{name}" value="{value}" placeholder="{esc(placeholder)}" autocomplete="off">'


def task_view(
    task_id: str,
    metadata: dict[str, Any] | None,
    given: dict[str, Any] | None,
    final: dict[str, Any] | None,
    *,
    version: str,
    auth: bool,
) -> str:
    """One task: the header rendered from its views; timeline, tool breakdown and live updates by task.js."""
    meta = metadata or {}
    fin = final or {}
    status = fin.get("status") or ("running" if metadata else "unknown")
    message = (given or {}).get("input_message") or meta.get("data", {}).get("input_message")
    facts = [
        ("Source", meta.get("source"), "source"),
        ("Agent", meta.get("agent_type"), "agent"),
        ("User", meta.get("user_id"), "user"),
        ("Machine", meta.get("machine_id"), "machine"),
        ("Created (UTC)", _when(meta.get("created_at")), "created"),
        ("Finished (UTC)", _when(fin.get("finished_at")), "finished"),
        ("Duration", _seconds(fin.get("duration_seconds")), "duration"),
        ("Cost", _usd(fin.get("cost_usd")), "cost"),
        ("Tokens in", _count(fin.get("input_tokens")), "tokens-in"),
        ("Tokens out", _count(fin.get("output_tokens")), "tokens-out"),
        ("Exit code", fin.get("exit_code"), "exit-code"),
        ("Events", None, "events"),
        ("Integrity", None, "integrity"),
    ]
    dl = "".join(
        f'<div><dt>{k}</dt><dd id="f-{key}">{esc(v) if v is not None else "—"}</dd></div>' for k, v, key in facts
    )
    prompt = ""
    if message:
        prompt = f'<details class="prompt" open><summary>Prompt</summary><pre>{esc(message)}</pre></details>'
    missing = "" if metadata else '<p class="note" id="waiting">No such task yet — this page waits for it.</p>'
    body = f"""
<section id="task" class="task" data-task-id="{esc(task_id)}" data-status="{esc(status)}"
  data-created="{esc(meta.get("created_at") or "")}">
<div class="task-head">
  <h1><span id="status" class="badge {esc(status)}">{esc(status)}</span>
    <span class="task-id">{esc(task_id)}</span></h1>
  <span class="spacer"></span>
  <span id="live-state" class="live-state"></span>
  <a class="button secondary" id="download" href="/tasks/{esc(_path(task_id))}/logs"
     download="{esc(task_id)}.json">Download JSON</a>
</div>
{missing}
<dl class="facts">{dl}</dl>
{prompt}
<section id="final" class="final" hidden><h2>Final result</h2><div id="final-body"></div></section>
<section class="tools"><h2>Per tool</h2><div id="tools"><p class="muted">No tool calls yet.</p></div></section>
<section class="timeline-wrap">
<div class="timeline-head"><h2>Timeline <span id="count" class="muted"></span></h2>
<span class="spacer"></span>
<label><input type="checkbox" data-lane="webhook" checked> webhook flow</label>
<label><input type="checkbox" data-lane="agent" checked> agent output</label>
<label><input type="checkbox" data-lane="user" checked> user input</label>
<button type="button" id="expand">Expand all</button></div>
<ol id="timeline" class="timeline"></ol>
</section>
</section>
<noscript><p class="error">The timeline needs JavaScript; the raw data is in the JSON download.</p></noscript>
"""
    return layout(f"Task {task_id}", body, scripts=("task.js",), version=version, auth=auth)


def login(next_path: str, *, version: str) -> str:
    """The login form: the API token, posted to ``POST /login``, which sets an HttpOnly cookie."""
    body = f"""
<section class="login">
<h1>Sign in</h1>
<p>This tasklogger requires its API token (<code>TASKLOGGER_API_TOKEN</code>).</p>
<form method="post" action="/login" id="login">
  <input type="hidden" name="next" value="{esc(next_path)}">
  <label>API token<input type="password" name="token" required autocomplete="current-password" autofocus></label>
  <button type="submit">Sign in</button>
  <p id="login-error" class="error" role="alert" hidden></p>
</form>
</section>
"""
    return layout("Sign in", body, scripts=("login.js",), version=version, auth=False)


def problem(message: str, *, version: str, auth: bool) -> str:
    """An error page with one clear sentence."""
    body = f'<p class="error">{esc(message)}</p><p><a href="/">All tasks</a></p>'
    return layout("Error", body, version=version, auth=auth)


def _path(task_id: str) -> str:
    return quote(task_id, safe="")


def _when(value: Any) -> str | None:
    """ISO-8601 -> ``2026-01-31 12:00:03`` in UTC; text that does not parse is shown as given."""
    if not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return value
    if at.tzinfo is not None:
        at = at.astimezone(UTC)
    return at.strftime("%Y-%m-%d %H:%M:%S")


def _seconds(value: Any) -> str | None:
    if not isinstance(value, int | float):
        return None
    minutes, seconds = divmod(float(value), 60)
    return f"{int(minutes)}m {seconds:04.1f}s" if minutes else f"{seconds:.1f}s"


def _usd(value: Any) -> str | None:
    return f"${value:.4f}" if isinstance(value, int | float) else None


def _count(value: Any) -> str | None:
    return f"{value:,}" if isinstance(value, int | float) else None

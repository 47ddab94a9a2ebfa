"""Task data in the terminal: the merged timeline, tool calls paired with results, per-tool costs, the final
result, and the number formats of the CLI. Task data is untrusted: it is printed as rich ``Text``, never parsed as
markup, so ``[red]`` in an agent's output stays literal."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

STATUS_STYLE = {"running": "bold blue", "completed": "green", "failed": "bold red"}
FILE_LANE = {"webhook_flow": "webhook", "agent_output": "agent", "user_inputs": "user"}
LANE_STYLE = {"webhook": "magenta", "agent": "cyan", "user": "yellow"}

out = Console(highlight=False, soft_wrap=False)
if not out.is_terminal and "COLUMNS" not in os.environ:
    out.width = 160  # piped into a file or grep: wide lines rather than cut ones


# -- terminal rendering -------------------------------------------------------------------------------------------


def merged(logs: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The records of the three JSONL files in one list, in stream-id order."""
    records = [(file, r) for file in FILE_LANE for r in (logs.get(file) or []) if isinstance(r, dict)]
    return sorted(records, key=lambda fr: id_key(str(fr[1].get("id", "0-0"))))


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable pair of numbers."""
    ms, _, seq = entry_id.partition("-")
    return (int(ms) if ms.isdigit() else 0, int(seq) if seq.isdigit() else 0)


class Pairing:
    """Tool results matched to their calls: by ``_tool_use_id``, else the oldest open call of the same tool."""

    def __init__(self) -> None:
        self.by_call: dict[int, dict[str, Any]] = {}
        self.consumed: set[int] = set()


def paired_results(records: list[tuple[str, dict[str, Any]]]) -> Pairing:
    """Which result belongs to which call (keyed by ``id()`` of the record dicts)."""
    pairing = Pairing()
    by_use: dict[str, dict[str, Any]] = {}
    open_calls: dict[str, list[dict[str, Any]]] = {}
    for _, record in records:
        data = data_of(record)
        name = str(data.get("name", "?"))
        if record.get("type") == "task:tool_call":
            if data.get("_tool_use_id") is not None:
                by_use[str(data["_tool_use_id"])] = record
            open_calls.setdefault(name, []).append(record)
        elif record.get("type") == "task:tool_result":
            call = by_use.get(str(data.get("_tool_use_id"))) if data.get("_tool_use_id") is not None else None
            queue = open_calls.get(name, [])
            call = call or (queue[0] if queue else None)
            if call is None or id(call) in pairing.by_call:
                continue
            pairing.by_call[id(call)] = record
            pairing.consumed.add(id(record))
            if call in queue:
                queue.remove(call)
    return pairing


def data_of(record: dict[str, Any], key: str = "data") -> dict[str, Any]:
    """A record's ``data`` object (``{}`` when it is missing or not an object)."""
    value = record.get(key)
    return value if isinstance(value, dict) else {}


def truthy(value: Any) -> bool:
    """The producers' booleans: true, "true", 1, "1", "yes"."""
    return value is True or value == 1 or (isinstance(value, str) and value.lower() in ("true", "1", "yes"))


def summary(record: dict[str, Any]) -> tuple[str, str]:
    """A headline and the body of a record (the body may be long)."""
    t = str(record.get("type", "?"))
    d = data_of(record)

    def kv(*names: str) -> str:
        return "  ".join(f"{n}={text(d[n])}" for n in names if d.get(n) not in (None, ""))

    table: dict[str, Callable[[], tuple[str, str]]] = {
        "webhook:received": lambda: (kv("source", "event_type", "payload_size"), ""),
        "webhook:validated": lambda: (
            "signature " + ("valid" if truthy(d.get("signature_valid")) else "NOT valid"),
            "",
        ),
        "webhook:matched": lambda: (kv("matched_handler", "event_type"), ""),
        "webhook:task_created": lambda: (kv("source"), text(d.get("input_message"))),
        "webhook:payload": lambda: (kv("source"), text(d.get("payload"))),
        "webhook:skipped": lambda: (kv("reason"), ""),
        "task:created": lambda: (kv("source", "assigned_agent", "agent_type", "user_id"), text(d.get("input_message"))),
        "task:started": lambda: (kv("session_id"), ""),
        "task:context_built": lambda: (kv("flow_id"), text(d.get("enriched_prompt"))),
        "task:output": lambda: ("", text(d.get("content"))),
        "task:thinking": lambda: ("", text(d.get("content"))),
        "task:raw_output": lambda: ("", text(d.get("raw_output"))),
        "task:tool_call": lambda: (str(d.get("name", "?")), text(d.get("input"))),
        "task:tool_result": lambda: (
            str(d.get("name", "?")) + (" ERROR" if truthy(d.get("is_error")) else ""),
            text(d.get("content")),
        ),  # fmt: skip
        "response:immediate": lambda: (kv("response_type", "target"), ""),
        "notification:ops": lambda: (kv("notification_type", "channel"), ""),
        "knowledge:query": lambda: (kv("kb"), text(d.get("query"))),
        "knowledge:result": lambda: (kv("hits"), text(d.get("content"))),
        "task:response_posted": lambda: (kv("method", "source"), ""),
        "task:metrics": lambda: (kv("cost_usd", "input_tokens", "output_tokens"), ""),
        "task:user_input": lambda: (kv("question_type"), text(d.get("content"))),
        "task:completed": lambda: (kv("status", "cost_usd", "exit_code"), text(d.get("result"))),
        "task:failed": lambda: (kv("exit_code"), text(d.get("error"))),
    }
    if t in table:
        return table[t]()
    return "", text(d) if d else ""


_pending: list[Text] = []


def emit(line: Text) -> None:
    """Queue one line; lines are printed in blocks (one rich print per line costs ~0.3 ms: 10,000 lines, 3 s)."""
    _pending.append(line)
    if len(_pending) >= 500:
        flush()


def flush() -> None:
    """Print the queued lines."""
    if _pending:
        out.print(Text("\n").join(_pending))
        _pending.clear()


def print_record(file: str, record: dict[str, Any], *, full: bool, result: dict[str, Any] | None = None) -> None:
    """One timeline line (and its body, shortened unless ``full``); a paired tool result indented below."""
    t = str(record.get("type", "?"))
    data = data_of(record)
    lane = FILE_LANE.get(file, "agent")
    error = t == "task:failed" or truthy(data.get("is_error")) or bool(data.get("error"))
    head, body = summary(record)
    line = Text.assemble(
        (when(record.get("ts"))[11:] or "—", "dim"), " ", (f"{lane:<7}", LANE_STYLE[lane]), " ",
        (t.removeprefix("task:"), "bold red" if error else "bold"), " ", head,
    )  # fmt: skip
    emit(line)
    if body:
        dim = t in ("task:thinking", "task:context_built", "task:raw_output", "webhook:payload")
        print_body(body, full=full, style="dim" if dim else ("red" if error else ""), lines=1 if dim else 6)
    if result is not None:
        rdata = data_of(result)
        bad = truthy(rdata.get("is_error"))
        took = elapsed(record.get("ts"), result.get("ts"))
        emit(Text.assemble("          ↳ ", ("error" if bad else "result", "bold red" if bad else "green"),
                           (f" after {seconds(took)}" if took is not None else "", "dim")))  # fmt: skip
        print_body(text(rdata.get("content")), full=full, style="red" if bad else "", lines=4)


def print_body(body: str, *, full: bool, style: str, lines: int) -> None:
    """A body indented under its line; at most ``lines`` lines unless ``full``."""
    rows = body.rstrip("\n").split("\n")
    shown = rows if full else [r[:200] + ("…" if len(r) > 200 else "") for r in rows[:lines]]
    for row in shown:
        emit(Text("            " + row, style))
    if not full and len(rows) > lines:
        emit(Text(f"            … {len(rows) - lines} more lines (--full shows everything)", "dim italic"))


def print_header(task_id: str, metadata: dict[str, Any], final: dict[str, Any] | None) -> None:
    """Task id, status and the facts of the header."""
    flush()
    status = str((final or {}).get("status") or "running")
    out.print(Text.assemble((status, STATUS_STYLE.get(status, "bold")), "  ", (task_id, "bold")))
    fin = final or {}
    facts = [
        ("source", metadata.get("source")), ("agent", metadata.get("agent_type")), ("user", metadata.get("user_id")),
        ("machine", metadata.get("machine_id")), ("created", when(metadata.get("created_at"))),
        ("duration", seconds(fin.get("duration_seconds"))), ("cost", usd(fin.get("cost_usd"))),
        ("tokens", f"{count(fin.get('input_tokens'))} in / {count(fin.get('output_tokens'))} out"),
        ("exit code", fin.get("exit_code")),
    ]  # fmt: skip
    out.print(Text("  ".join(f"{k}: {v if v is not None else '—'}" for k, v in facts), "dim"))
    out.print()


def print_tools(records: list[tuple[str, dict[str, Any]]]) -> None:
    """Calls, errors and estimated cost per tool (what each metrics snapshot adds, split over the calls since)."""
    flush()
    rows: dict[str, list[float]] = {}
    prev = [0.0, 0.0, 0.0]
    since: list[str] = []
    metered = False
    for _, record in records:
        d = data_of(record)
        t = record.get("type")
        if t == "task:tool_call":
            since.append(str(d.get("name", "?")))
            rows.setdefault(since[-1], [0, 0, 0.0, 0.0, 0.0])[0] += 1
        elif t == "task:tool_result" and truthy(d.get("is_error")):
            rows.setdefault(str(d.get("name", "?")), [0, 0, 0.0, 0.0, 0.0])[1] += 1
        elif t in ("task:metrics", "task:completed", "task:failed"):
            cur = [number(d.get(k)) for k in ("cost_usd", "input_tokens", "output_tokens")]
            if all(v is None for v in cur):
                continue
            metered = True
            now = [c if c is not None else p for c, p in zip(cur, prev, strict=True)]
            for name in since:
                for i in range(3):
                    rows[name][2 + i] += max(0.0, now[i] - prev[i]) / len(since)
            prev, since = now, []
    if not rows:
        return
    table = Table(title="per tool", title_justify="left", box=None, header_style="bold", pad_edge=False)
    for name in ("tool", "calls", "errors", "cost*", "tokens in*", "tokens out*"):
        table.add_column(name, justify="left" if name == "tool" else "right")
    for name, (calls, errors, cost, tin, tout) in sorted(rows.items(), key=lambda kv: (-kv[1][2], -kv[1][0])):
        table.add_row(Text(name), str(int(calls)), Text(str(int(errors)), "red" if errors else ""),
                      usd(cost) if metered else "—", count(round(tin)) if metered else "—",
                      count(round(tout)) if metered else "—")  # fmt: skip
    out.print()
    out.print(table)
    out.print(Text("* estimated from the running totals of task:metrics, split over the calls in between", "dim"))


def print_final(final: dict[str, Any]) -> None:
    """The final result: status, figures, and the result or the error."""
    flush()
    status = str(final.get("status") or "completed")
    out.print()
    exit_code = "—" if final.get("exit_code") is None else final["exit_code"]
    figures = (
        f"cost {usd(final.get('cost_usd'))}  duration {seconds(final.get('duration_seconds'))}  exit code {exit_code}"
    )
    out.print(
        Text.assemble(("final result: ", "bold"), (status, STATUS_STYLE.get(status, "bold")), "  ", (figures, "dim"))
    )
    if final.get("error"):
        out.print(Text(text(final["error"]), "red"))
    if final.get("result") not in (None, ""):
        out.print(Text(text(final["result"])))


# -- formatting ---------------------------------------------------------------------------------------------------


def text(value: Any) -> str:
    """A value as text: strings as they are, anything else as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def one_line(value: str, limit: int) -> str:
    """The first line of ``value``, at most ``limit`` characters."""
    line = value.strip().split("\n", 1)[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def number(value: Any) -> float | None:
    """A number, also from the strings producers send; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value) if isinstance(value, str) else None
    except ValueError:
        return None


def usd(value: Any) -> str:
    """A cost in dollars, four decimals."""
    n = number(value)
    return "—" if n is None else f"${n:.4f}"


def count(value: Any) -> str:
    """A token count with thousands separators."""
    n = number(value)
    return "—" if n is None else f"{int(n):,}"


def seconds(value: Any) -> str:
    """A duration: ``12.5s`` or ``3m 07s``."""
    n = number(value)
    if n is None:
        return "—"
    return f"{n:.1f}s" if n < 60 else f"{int(n // 60)}m {int(n % 60):02d}s"


def when(value: Any) -> str:
    """ISO-8601 as ``2026-01-31 12:00:03`` (UTC); anything else as given."""
    if not isinstance(value, str):
        return "—"
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return value
    return (at.astimezone(UTC) if at.tzinfo else at).strftime("%Y-%m-%d %H:%M:%S")


def elapsed(start: Any, end: Any) -> float | None:
    """Seconds between two ISO-8601 timestamps, or None when either does not parse (or time runs backwards)."""
    try:
        first, last = datetime.fromisoformat(str(start)), datetime.fromisoformat(str(end))
        span = (last - first).total_seconds()
    except (ValueError, TypeError):  # TypeError: one naive, one aware
        return None
    return span if span >= 0 else None

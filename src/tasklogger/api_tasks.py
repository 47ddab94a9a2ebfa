"""GET /tasks, /tasks/{id}, /tasks/{id}/logs and /dead-letters: the read side over the index and the files."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response, StreamingResponse

from .api_models import CompatLogs, DeadLetterPage, Problem, RecordPage, TaskList, TaskSummary
from .config import Settings
from .errors import UnsafeTaskId
from .index import STATUSES, BadQuery, IndexUnavailable, Reader
from .index import Query as TaskQuery
from .index import summary_dict as index_summary
from .reader import COMPAT_KEYS, JSONL_KEYS, TaskDir, TaskNotFound, open_state_dir, page, stream_compat
from .summary import read_task
from .wire import parse_timestamp

DEAD_LETTERS = "dead-letters.jsonl"
#: Longest accepted query strings: a search or a filter value this long is a mistake or an attack.
MAX_TEXT = 500
_STREAM_ID = re.compile(r"[0-9]{1,20}(-[0-9]{1,20})?", re.ASCII)

#: Answers every task endpoint may give besides 200.
TASK_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "unsafe task id or bad parameter"},
    401: {"model": Problem, "description": "API token required"},
    404: {"model": Problem, "description": "unknown task"},
}

Integrity = Callable[[Path, str], dict[str, Any] | None]


def open_task(settings: Settings, task_id: str) -> TaskDir:
    """The task's directory; HTTP 400 for an unsafe id, 404 when there is none."""
    try:
        return TaskDir(settings.logs_dir, task_id)
    except UnsafeTaskId as exc:
        raise HTTPException(status_code=400, detail=exc.detail) from None
    except TaskNotFound:
        raise HTTPException(status_code=404, detail=f"no task {task_id!r}") from None


def parse_time(value: str | None, name: str) -> float | None:
    """ISO 8601 or epoch seconds -> epoch seconds; HTTP 400 naming the parameter otherwise."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
        if number == number and abs(number) < 1e12:  # not NaN, not absurd
            return number
    except ValueError:
        pass
    moment = parse_timestamp(value)
    if moment is None:
        raise HTTPException(status_code=400, detail=f"{name} must be ISO 8601 or epoch seconds")
    return moment.astimezone(UTC).timestamp()


def check_stream_id(value: str | None, name: str) -> str | None:
    """A stream entry id parameter (``1732450000000-0``), or HTTP 400."""
    if value is None or value == "":
        return None
    if not _STREAM_ID.fullmatch(value):
        raise HTTPException(status_code=400, detail=f"{name} must be a stream entry id like 1732450000000-0")
    return value


def task_summary(reader: Reader, task: TaskDir) -> dict[str, Any]:
    """The summary from the index, or read from the files when the index does not have the task (yet)."""
    try:
        summary = reader.summary(task.task_id)
    except IndexUnavailable:
        summary = None
    if summary is None:
        row, _ = read_task(task)
        summary = index_summary(row)
    return summary


def compat_keys(files: str | None) -> list[str]:
    """The compat keys ``?files=`` selects (all by default); HTTP 400 for an unknown one."""
    if files is None:
        return list(COMPAT_KEYS)
    keys = [key.strip() for key in files.split(",") if key.strip()]
    if not keys or any(key not in COMPAT_KEYS for key in keys):
        raise HTTPException(status_code=400, detail=f"files must be among {', '.join(COMPAT_KEYS)}")
    return list(dict.fromkeys(keys))


def json_response(body: Any) -> Response:
    """A JSON answer serialised by orjson."""
    return Response(orjson.dumps(body), media_type="application/json")


Text = Annotated[str | None, Query(max_length=MAX_TEXT)]
Sort = Literal[
    "created_at", "-created_at", "updated_at", "-updated_at", "cost_usd", "-cost_usd", "duration_seconds",
    "-duration_seconds",
]  # fmt: skip


def router(settings: Settings, reader: Reader, integrity: Integrity | None = None) -> APIRouter:
    """The task routes over ``settings.logs_dir`` and the index ``reader``."""
    api = APIRouter()

    def with_integrity(summary: dict[str, Any]) -> dict[str, Any]:
        if integrity is not None:
            summary["integrity"] = integrity(settings.logs_dir, summary["task_id"])
        return summary

    @api.get("/tasks", response_model=TaskList, responses={**TASK_ERRORS, 503: {"model": Problem}})
    def list_tasks(
        source: Text = None,
        status: Literal["running", "completed", "failed"] | None = None,
        agent: Text = None,
        user: Text = None,
        since: Annotated[str | None, Query(max_length=64, description="ISO 8601 or epoch seconds")] = None,
        until: Annotated[str | None, Query(max_length=64, description="ISO 8601 or epoch seconds")] = None,
        q: Annotated[str | None, Query(max_length=MAX_TEXT, description="full-text search: all words")] = None,
        sort: Sort = "-created_at",
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(max_length=500)] = None,
    ) -> Response:
        """Tasks, newest first by default: filters, full-text search, sort and cursor pagination."""
        assert status is None or status in STATUSES
        query = TaskQuery(
            source=source, status=status, agent=agent, user=user, since=parse_time(since, "since"),
            until=parse_time(until, "until"), q=q or None, sort=sort, limit=limit, cursor=cursor or None,
        )  # fmt: skip
        try:
            tasks, next_cursor = reader.search(query)
        except BadQuery as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        except IndexUnavailable as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from None
        return json_response({"tasks": [with_integrity(t) for t in tasks], "next_cursor": next_cursor})

    @api.get("/tasks/{task_id}", response_model=TaskSummary, responses=TASK_ERRORS)
    def get_task(task_id: str) -> Response:
        """One task's summary: from the index, or read from its files when the index does not have it yet."""
        with open_task(settings, task_id) as task:
            return json_response(with_integrity(task_summary(reader, task)))

    @api.get(
        "/tasks/{task_id}/logs",
        response_model=CompatLogs | RecordPage,
        responses=TASK_ERRORS,
        summary="Task logs",
    )
    def task_logs(
        task_id: str,
        files: Annotated[
            str | None, Query(max_length=200, description="comma-separated keys, e.g. agent_output,final_result")
        ] = None,
        file: Annotated[
            Literal["webhook_flow", "agent_output", "user_inputs"] | None,
            Query(description="page one JSONL file instead of the whole object"),
        ] = None,
        after: Annotated[str | None, Query(max_length=64, description="with file: continue after this id")] = None,
        limit: Annotated[int, Query(ge=1, le=5000, description="with file: records per page")] = 500,
    ) -> Response:
        """Every file of one task under the keys existing readers expect, streamed (constant memory); or, with
        ``file``, one page of that JSONL file."""
        after = check_stream_id(after, "after")
        keys = compat_keys(files)
        if file is None and after is not None:
            raise HTTPException(status_code=400, detail="after needs file=")
        task = open_task(settings, task_id)
        if file is not None:
            with task:
                records, next_after = page(task.fd, JSONL_KEYS[file], after, limit)
            return json_response({"records": records, "next_after": next_after})
        # The generator closes the directory when the response ends (or the client goes away).
        return StreamingResponse(stream_compat(task, keys), media_type="application/json")

    @api.get("/dead-letters", response_model=DeadLetterPage, responses={400: {"model": Problem}})
    def dead_letters(
        after: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        reason: Annotated[str | None, Query(max_length=100)] = None,
    ) -> Response:
        """Entries that could not be stored, with the reason, oldest first (docs/records.md#dead-letters)."""
        after = check_stream_id(after, "after")
        try:
            state = open_state_dir(settings.logs_dir)
        except FileNotFoundError:
            return Response(b'{"dead_letters":[],"next_after":null}', media_type="application/json")
        try:
            match = None if reason is None else (lambda rec: rec.get("reason") == reason)
            records, next_after = page(state, DEAD_LETTERS, after, limit, match)
        finally:
            os.close(state)
        return json_response({"dead_letters": records, "next_after": next_after})

    return api

"""A small HTTP client of the tasklogger API, for the CLI commands that talk to a running service.

The base URL comes from ``--url`` / ``TASKLOGGER_URL`` (default ``http://127.0.0.1:8090``), the token from
``--token`` / ``TASKLOGGER_API_TOKEN``. Every failure becomes one ``ApiError`` whose message is a sentence a
user can act on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from .errors import TaskLoggerError, UnsafeTaskId
from .wire import check_name

DEFAULT_URL = "http://127.0.0.1:8090"  # the same as cli_client.DEFAULT_URL
#: How long to wait before reconnecting a dropped event stream, and how often to try.
RECONNECT_DELAY_S = 1.0
RECONNECT_TRIES = 30


class ApiError(TaskLoggerError):
    """Raised when the service cannot be reached or answers with an error; ``status`` is 0 when unreachable."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServerEvent:
    """One event of a ``text/event-stream``: its name, id and decoded JSON data."""

    event: str
    id: str | None
    data: Any


class Client:
    """Synchronous client of one tasklogger service."""

    def __init__(self, base_url: str = DEFAULT_URL, token: str | None = None, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": "tasklogger-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET ``path`` and decode its JSON; raises ApiError on any failure."""
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self.http.get(path, params=clean)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            raise ApiError(_problem(response), response.status_code)
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise ApiError(f"{self.base_url}{path} did not answer JSON (is this a tasklogger service?)") from None

    def tasks(self, **filters: Any) -> dict[str, Any]:
        """One page of GET /tasks: ``{"tasks": [...], "next_cursor": ...}``."""
        page = self.get("/tasks", filters)
        if not isinstance(page, dict) or not isinstance(page.get("tasks"), list):
            raise ApiError("GET /tasks answered something other than a task list")
        return page

    def task(self, task_id: str) -> dict[str, Any]:
        """The TaskSummary of one task (GET /tasks/{id})."""
        return dict(self.get(task_path(task_id)))

    def logs(self, task_id: str) -> dict[str, Any]:
        """Every file of one task (GET /tasks/{id}/logs)."""
        return dict(self.get(task_path(task_id, "/logs")))

    def dead_letters(self, **params: Any) -> dict[str, Any]:
        """One page of GET /dead-letters."""
        return dict(self.get("/dead-letters", params))

    def events(self, task_id: str, *, after: str | None = None, wait: bool = False) -> Iterator[ServerEvent]:
        """Follow GET /tasks/{id}/events until its ``end`` event (which is yielded last).

        A dropped connection is resumed with ``Last-Event-ID`` after the last record seen, so nothing is missed
        or repeated.
        """
        last = after
        tries = 0
        path = task_path(task_id, "/events")
        while True:
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = last
            try:
                with self.http.stream("GET", path, headers=headers, params={"wait": 1} if wait else None,
                                      timeout=httpx.Timeout(10.0, read=60.0)) as response:  # fmt: skip
                    if response.status_code >= 400:
                        response.read()
                        raise ApiError(_problem(response), response.status_code)
                    tries = 0
                    for event in parse_sse(response.iter_lines()):
                        if event.id is not None:
                            last = event.id
                        yield event
                        if event.event == "end":
                            return
            except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
                tries += 1
                if tries > RECONNECT_TRIES:
                    raise self._unreachable(exc) from None
            time.sleep(RECONNECT_DELAY_S)  # the stream ended without "end" or dropped: resume after ``last``

    def _unreachable(self, exc: Exception) -> ApiError:
        reason = str(exc) or type(exc).__name__
        return ApiError(f"cannot reach tasklogger at {self.base_url} ({reason}); is `tasklogger serve` running?")


def task_path(task_id: str, suffix: str = "") -> str:
    """``/tasks/{id}{suffix}``; an id the service would refuse is refused here, before it becomes a URL."""
    try:
        check_name(task_id)
    except UnsafeTaskId as exc:
        raise ApiError(f"not a valid task id: {exc.detail}") from None
    return f"/tasks/{quote(task_id, safe='')}{suffix}"


def parse_sse(lines: Iterator[str]) -> Iterator[ServerEvent]:
    """Events of a ``text/event-stream`` (comments such as ``: ping`` skipped; data decoded as JSON)."""
    event, ident = "message", None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                text = "\n".join(data)
                try:
                    value: Any = orjson.loads(text)
                except orjson.JSONDecodeError:
                    value = text
                yield ServerEvent(event, ident, value)
            event, data, ident = "message", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value_text = line.partition(":")
        value_text = value_text.removeprefix(" ")
        if name == "event":
            event = value_text
        elif name == "data":
            data.append(value_text)
        elif name == "id":
            ident = value_text


def _problem(response: httpx.Response) -> str:
    """One sentence for an error answer: the API's ``detail`` when there is one."""
    detail: Any = None
    try:
        body = orjson.loads(response.content)
        detail = body.get("detail") if isinstance(body, dict) else None
    except orjson.JSONDecodeError:
        pass
    if response.status_code == 401:
        return "the service requires an API token: pass --token or set TASKLOGGER_API_TOKEN" + (
            f" ({detail})" if isinstance(detail, str) and "token" not in detail.lower() else ""
        )
    if detail is None:
        detail = response.reason_phrase or "error"
    if not isinstance(detail, str):
        detail = "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    return f"{response.request.method} {response.request.url.path} answered {response.status_code}: {detail}"

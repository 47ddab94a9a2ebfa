"""GET /tasks/{id}/events: the task's records as Server-Sent Events, live, resumable by stream id.

Everything already on disk is sent first, then each record as it is appended (the files are polled every
POLL_S), merged over the three JSONL files in stream-id order. Each event's ``id:`` is the record's stream entry
id, so a reconnect with ``Last-Event-ID`` (EventSource does that by itself) or ``?after=`` resumes with no gap and
no repeat. When the final result exists and its record was sent, ``event: end`` carries 04-final-result.json and
the stream closes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
import orjson
from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from .api_tasks import TASK_ERRORS, check_stream_id
from .config import Settings
from .errors import UnsafeTaskId
from .fsio import read_file
from .projector import FINAL_RESULT
from .reader import Tail, TaskDir, TaskNotFound
from .records import stream_id_key
from .wire import check_name

#: How often the files are looked at for new records (the live latency of the stream).
POLL_S = 0.1
#: A comment line this often keeps proxies and load balancers from closing an idle stream.
PING_S = 15.0
#: What EventSource waits before reconnecting (ms).
RETRY_MS = 1000

#: One event of the stream, as the OpenAPI schema describes it (``data`` is JSON text).
SSE_EVENT_SCHEMA = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["record", "end"]},
        "id": {"type": "string", "description": "stream entry id of the record (absent on end)"},
        "data": {"type": "string", "description": 'record: {"file": ..., "record": {...}}; end: the final result'},
    },
    "required": ["event", "data"],
}


def router(settings: Settings) -> APIRouter:
    """The SSE route over ``settings.logs_dir``."""
    api = APIRouter()

    @api.get(
        "/tasks/{task_id}/events",
        responses={
            **TASK_ERRORS,
            200: {
                "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
                "description": "id: <stream id> / event: record / data: {file, record}; finally event: end",
            },
        },
        response_class=StreamingResponse,
    )
    async def task_events(
        request: Request,
        task_id: str,
        after: Annotated[str | None, Query(max_length=64, description="resume after this stream id")] = None,
        wait: Annotated[bool, Query(description="wait for a task that does not exist yet")] = False,
        last_event_id: Annotated[str | None, Header(max_length=64)] = None,
    ) -> StreamingResponse:
        """The task's records as they are written (text/event-stream), then its final result."""
        try:
            check_name(task_id)
        except UnsafeTaskId as exc:
            raise HTTPException(status_code=400, detail=exc.detail) from None
        resume = check_stream_id(last_event_id or after, "Last-Event-ID" if last_event_id else "after")
        task: TaskDir | None = None
        try:
            task = TaskDir(settings.logs_dir, task_id)
        except TaskNotFound:
            if not wait:
                detail = f"no task {task_id!r} (add ?wait=1 to wait for it)"
                raise HTTPException(status_code=404, detail=detail) from None
        stream = _events(request, settings, task_id, task, resume)
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)

    return api


async def _events(
    request: Request, settings: Settings, task_id: str, task: TaskDir | None, resume: str | None
) -> AsyncIterator[bytes]:
    pinger = _Pinger()
    yield f"retry: {RETRY_MS}\n\n".encode()
    try:
        while task is None:  # ?wait=1: the task appears when its first event is written
            await anyio.sleep(POLL_S * 2.5)
            if pinger.due():
                yield b": ping\n\n"
            try:
                task = TaskDir(settings.logs_dir, task_id)
            except TaskNotFound:
                if await request.is_disconnected():
                    return
                continue
        follower = _Follower(task, resume)
        while True:
            chunk = await anyio.to_thread.run_sync(follower.next_events)
            if chunk:
                pinger.reset()
                yield chunk
                continue
            if follower.tail.holding:
                continue
            end = await anyio.to_thread.run_sync(follower.end_event)
            if end is not None:
                yield end
                return
            if await request.is_disconnected():
                return
            if pinger.due():
                yield b": ping\n\n"
            await anyio.sleep(POLL_S)
    finally:
        if task is not None:
            task.close()


class _Pinger:
    def __init__(self) -> None:
        self.last = time.monotonic()

    def reset(self) -> None:
        self.last = time.monotonic()

    def due(self) -> bool:
        if time.monotonic() - self.last < PING_S:
            return False
        self.reset()
        return True


class _Follower:
    """The state of one event stream: what was read, what the client has, whether the end was reached."""

    def __init__(self, task: TaskDir, resume: str | None) -> None:
        self.task = task
        self.tail = Tail(task)
        self.resume_key = stream_id_key(resume) if resume else None
        #: Highest id the client has: the SSE id of every event, so a resume never repeats anything.
        self.sent_max = self.resume_key
        self.sent_max_id = resume
        self.final_id: str | None = None
        self.final_seen = False

    def next_events(self) -> bytes:
        """The SSE text of the records appended since the last call (empty when none)."""
        out = bytearray()
        for key, entry_id, file_key, line in self.tail.new_records():
            if entry_id == self.final_id:
                self.final_seen = True
            if self.resume_key is not None and key <= self.resume_key:
                continue  # the client had it before it reconnected
            if self.sent_max is None or key > self.sent_max:
                self.sent_max, self.sent_max_id = key, entry_id
            # A record appended out of stream order still goes out now; the event id stays the highest sent.
            out += b"id: " + (self.sent_max_id or entry_id).encode() + b"\nevent: record\ndata: "
            out += b'{"file":"' + file_key.encode() + b'","record":' + line + b"}\n\n"
        return bytes(out)

    def end_event(self) -> bytes | None:
        """``event: end`` once the final result exists and its record was read; None while the task runs."""
        raw = read_file(self.task.fd, FINAL_RESULT)
        if raw is None:
            return None
        doc = orjson.loads(raw)
        final_id = doc.get("stream_id") if isinstance(doc, dict) else None
        if final_id != self.final_id:
            self.final_id = final_id if isinstance(final_id, str) else None
            self.final_seen = self._already_read()
        if not self.final_seen:
            return None  # the view is written before the record: wait for the record
        return b"event: end\ndata: " + orjson.dumps(doc) + b"\n\n"

    def _already_read(self) -> bool:
        if self.final_id is None:
            return True
        try:
            key = stream_id_key(self.final_id)
        except ValueError:
            return True
        if self.resume_key is not None and key <= self.resume_key:
            return True
        return key <= self.tail.max_key

"""A tiny HTTP client for the API tests: raw paths (no client-side normalisation), headers, and an SSE reader."""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Answer:
    """A response, read whole."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int, path: str, *, method: str = "GET", headers: dict[str, str] | None = None, body: bytes | None = None
) -> Answer:
    """Send ``path`` exactly as given and read the whole answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


@dataclass
class SseEvent:
    """One server-sent event."""

    event: str
    data: str
    id: str | None = None


@dataclass
class SseStream:
    """An open text/event-stream response, read event by event."""

    conn: http.client.HTTPConnection
    response: http.client.HTTPResponse
    comments: list[str] = field(default_factory=list)

    def next(self, timeout: float = 10.0) -> SseEvent | None:
        """The next event, or None when the server closed the stream."""
        deadline = time.monotonic() + timeout
        event, data, entry_id = "message", [], None
        while time.monotonic() < deadline:
            raw = self.response.readline()
            if not raw:
                return None
            line = raw.decode().rstrip("\n")
            if line == "":
                if data:
                    return SseEvent(event, "\n".join(data), entry_id)
                continue
            if line.startswith(":"):
                self.comments.append(line)
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                entry_id = value
        raise AssertionError("no SSE event in time")

    def close(self) -> None:
        self.conn.close()


def open_sse(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, SseStream]:
    """Open an SSE stream; returns (status, stream)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    conn.putrequest("GET", path, skip_accept_encoding=True)
    conn.putheader("Accept", "text/event-stream")
    for name, value in (headers or {}).items():
        conn.putheader(name, value)
    conn.endheaders()
    response = conn.getresponse()
    return response.status, SseStream(conn, response)

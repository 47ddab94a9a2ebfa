"""GET /tasks/{id}/events of a real ``tasklogger serve``: what is on disk, then live records, in stream-id order
over the three JSONL files; resuming with Last-Event-ID (or ?after=) across reconnects while events keep arriving,
with no gap and no repeat; the end event; waiting for a task that does not exist yet."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.integration.http_helpers import SseEvent, open_sse, request
from tests.support import (
    Publisher,
    ServiceProcess,
    group_drained,
    wait_until,
)


def read_all(service: ServiceProcess, path: str, headers: dict[str, str] | None = None) -> list[SseEvent]:
    status, stream = open_sse(service.port, path, headers)
    assert status == 200
    try:
        events = []
        while (event := stream.next()) is not None:
            events.append(event)
        return events
    finally:
        stream.close()


def test_events_merge_the_files_in_stream_order_then_end(service: ServiceProcess, pub: Publisher) -> None:
    ids = [
        pub.event("webhook:received", webhook_event_id="wh-sse", data={"source": "github"}),
        pub.event("webhook:task_created", webhook_event_id="wh-sse", data={"task_id": "sse-1"}),
        pub.event("task:created", task_id="sse-1", data={"source": "github", "input_message": "hi"}),
        pub.event("task:output", task_id="sse-1", data={"content": "thinking"}),
        pub.event("task:user_input", task_id="sse-1", data={"content": "yes", "question_type": "confirm"}),
        pub.event("task:output", task_id="sse-1", data={"content": "done"}),
        pub.event("task:completed", task_id="sse-1", data={"result": "all good", "cost_usd": 0.5}),
    ]
    wait_until(lambda: group_drained(pub.client), what="drained")

    events = read_all(service, "/tasks/sse-1/events")

    records = [e for e in events if e.event == "record"]
    assert [e.id for e in records] == ids
    files = [json.loads(e.data)["file"] for e in records]
    assert files == ["webhook_flow"] * 2 + ["agent_output"] * 2 + ["user_inputs"] + ["agent_output"] * 2
    assert all(json.loads(e.data)["record"]["id"] == e.id for e in records)
    assert events[-1].event == "end"
    final = json.loads(events[-1].data)
    assert final["result"] == "all good" and final["stream_id"] == ids[-1]

    # Resuming after the last record gives only the end; ?after= is the same as the header.
    assert [e.event for e in read_all(service, "/tasks/sse-1/events", {"Last-Event-ID": ids[-1]})] == ["end"]
    resumed = read_all(service, f"/tasks/sse-1/events?after={ids[3]}")
    assert [e.id for e in resumed if e.event == "record"] == ids[4:]


def test_resume_with_last_event_id_across_reconnects_while_events_keep_arriving(
    service: ServiceProcess, pub: Publisher
) -> None:
    published: list[str] = [pub.event("task:created", task_id="sse-live", data={"source": "slack"})]
    stop = threading.Event()

    def produce() -> None:
        n = 0
        while not stop.is_set() and n < 400:
            published.append(pub.event("task:output", task_id="sse-live", data={"content": f"step {n}"}))
            if n % 7 == 0:
                published.append(pub.event("task:user_input", task_id="sse-live", data={"content": f"q{n}"}))
            n += 1
            time.sleep(0.004)
        published.append(pub.event("task:completed", task_id="sse-live", data={"result": "finished"}))

    wait_until(lambda: request(service.port, "/tasks/sse-live").status == 200, what="the task to exist")
    producer = threading.Thread(target=produce)
    producer.start()
    received: list[str] = []
    end: SseEvent | None = None
    reconnects = 0
    try:
        while end is None:
            headers = {"Last-Event-ID": received[-1]} if received else {}
            status, stream = open_sse(service.port, "/tasks/sse-live/events", headers)
            assert status == 200
            try:
                # Read a few events, then drop the connection as a flaky network would.
                for _ in range(37):
                    event = stream.next()
                    assert event is not None, "the stream ended without an end event"
                    if event.event == "end":
                        end = event
                        break
                    assert event.id is not None
                    received.append(event.id)
            finally:
                stream.close()
            reconnects += 1
    finally:
        stop.set()
        producer.join(10)

    assert reconnects >= 5
    assert received == published, "a gap, a repeat or a reordering across reconnects"
    assert json.loads(end.data)["result"] == "finished"


def test_wait_for_a_task_that_does_not_exist_yet(service: ServiceProcess, pub: Publisher) -> None:
    assert request(service.port, "/tasks/sse-later/events").status == 404
    status, stream = open_sse(service.port, "/tasks/sse-later/events?wait=1")
    try:
        assert status == 200
        created = pub.event("task:created", task_id="sse-later", data={"source": "jira"})
        first = stream.next()
        assert first is not None and first.id == created
        done = pub.event("task:failed", task_id="sse-later", data={"error": "boom"})
        second = stream.next()
        assert second is not None and second.id == done
        end = stream.next()
        assert end is not None and end.event == "end" and json.loads(end.data)["status"] == "failed"
        assert stream.next() is None
    finally:
        stream.close()


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/tasks/sse-1/events", {"Last-Event-ID": "not-an-id"}, 400),
        ("/tasks/sse-1/events?after=1-2-3", {}, 400),
        ("/tasks/%2E%2E/events?wait=1", {}, 400),
        ("/tasks/a%00b/events", {}, 400),
    ],
)
def test_bad_resume_points_and_ids_are_400(
    service: ServiceProcess, path: str, headers: dict[str, str], status: int
) -> None:
    answer = request(service.port, path, headers=headers)

    assert answer.status == status and answer.json()["detail"]

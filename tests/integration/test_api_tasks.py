"""GET /tasks, /tasks/{id}, /tasks/{id}/logs, /dead-letters, /livez and /metrics of a real ``tasklogger serve``
over a real Redis: filters, full-text search, sorting, cursor pagination, streaming and paging of the logs, the
refusal of unsafe ids and paths, and the Prometheus exposition."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from tests.integration.http_helpers import request
from tests.support import (
    Publisher,
    RedisProcess,
    ServiceProcess,
    group_drained,
    wait_until,
)


def publish_task(
    pub: Publisher,
    task_id: str,
    *,
    source: str = "github",
    agent: str = "coder",
    user: str = "u1",
    message: str = "do the thing",
    outputs: tuple[str, ...] = (),
    created: str = "2026-01-31T12:00:00Z",
    final: dict[str, Any] | None = None,
    failed: str | None = None,
) -> None:
    data = {"source": source, "assigned_agent": agent, "user_id": user, "machine_id": "m1", "input_message": message}
    pub.event("task:created", task_id=task_id, data=data, timestamp=created)
    for text in outputs:
        pub.event("task:output", task_id=task_id, data={"content": text}, timestamp=created)
    if final is not None:
        pub.event("task:completed", task_id=task_id, data=final, timestamp=created)
    if failed is not None:
        pub.event("task:failed", task_id=task_id, data={"error": failed}, timestamp=created)


def drained(service: ServiceProcess, pub: Publisher) -> None:
    wait_until(lambda: group_drained(pub.client), timeout=15, what="the service to drain the stream")


def get(service: ServiceProcess, path: str, **headers: str) -> Any:
    answer = request(service.port, path, headers=headers)
    assert answer.status == 200, (path, answer.status, answer.body[:300])
    return answer.json()


def task_ids(service: ServiceProcess, **params: Any) -> list[str]:
    body = get(service, "/tasks?" + urlencode(params))
    return [t["task_id"] for t in body["tasks"]]


def indexed(service: ServiceProcess, task_id: str, total: int) -> bool:
    body = get(service, "/tasks?" + urlencode({"limit": 500}))
    return any(t["task_id"] == task_id and t["events"]["total"] == total for t in body["tasks"])


# -- /tasks and /tasks/{id} -------------------------------------------------------------------------------------


def test_task_list_filters_search_sort_and_summary(service: ServiceProcess, pub: Publisher) -> None:
    publish_task(pub, "ls-a", source="github", agent="coder", user="alice", message="fix the flaky login test",
                 outputs=("I found the race in the session cache",), created="2026-02-01T10:00:00Z",
                 final={"status": "completed", "cost_usd": "0.75", "input_tokens": 1200, "output_tokens": 300,
                        "duration_seconds": 42.5, "exit_code": 0, "result": "merged pull request"})  # fmt: skip
    publish_task(pub, "ls-b", source="jira", agent="planner", user="bob", message="plan the quarterly migration",
                 created="2026-02-02T10:00:00Z", failed="quota exceeded on the billing account")  # fmt: skip
    publish_task(pub, "ls-c", source="slack", agent="coder", user="alice", message="summarise the incident channel",
                 outputs=("working on it",), created="2026-02-03T10:00:00Z")  # fmt: skip
    pub.event("task:metrics", task_id="ls-c", data={"cost_usd": "0.10", "input_tokens": "50"})
    drained(service, pub)
    wait_until(lambda: indexed(service, "ls-c", 3), what="the index to catch up")

    assert task_ids(service, source="github") == ["ls-a"]
    assert task_ids(service, status="failed") == ["ls-b"]
    assert task_ids(service, status="running", user="alice") == ["ls-c"]
    assert task_ids(service, agent="coder", sort="created_at") == ["ls-a", "ls-c"]
    assert task_ids(service, since="2026-02-02T00:00:00Z", until="2026-02-02T23:00:00+00:00") == ["ls-b"]
    assert task_ids(service, since=str(1769983200), agent="coder") == ["ls-c"]  # epoch seconds = 2026-02-01T22:00Z
    # Full text: the input message, the agent's output, the error and the final result are all searchable.
    assert task_ids(service, q="session cache") == ["ls-a"]
    assert task_ids(service, q="quota billing") == ["ls-b"]
    assert task_ids(service, q="merged") == ["ls-a"]
    assert task_ids(service, q="incident") == ["ls-c"]
    assert task_ids(service, q="migrat*") == ["ls-b"]
    assert task_ids(service, q="login nothing-like-this") == []
    assert task_ids(service, q='"OR" AND (') == []  # operators are plain words, never a syntax error
    ids = task_ids(service, sort="-cost_usd", limit=500)
    assert ids.index("ls-a") < ids.index("ls-c") < ids.index("ls-b")

    summary = get(service, "/tasks/ls-a")
    expected = {
        "task_id": "ls-a", "source": "github", "agent_type": "coder", "user_id": "alice", "machine_id": "m1",
        "status": "completed", "created_at": "2026-02-01T10:00:00.000Z", "finished_at": "2026-02-01T10:00:00.000Z",
        "duration_seconds": 42.5, "cost_usd": 0.75, "input_tokens": 1200, "output_tokens": 300, "exit_code": 0,
        "error": None, "message": "fix the flaky login test",
        "events": {"webhook_flow": 0, "agent_output": 3, "user_inputs": 0, "total": 3},
    }  # fmt: skip
    assert {k: summary[k] for k in expected} == expected
    assert summary["integrity"]["sealed"] is True and len(summary["integrity"]["digest"]) == 64  # docs/audit.md
    assert summary["first_entry_id"] < summary["last_entry_id"]
    failed = get(service, "/tasks/ls-b")
    assert failed["status"] == "failed" and failed["error"] == "quota exceeded on the billing account"
    running = get(service, "/tasks/ls-c")
    assert running["status"] == "running" and running["cost_usd"] == 0.1 and running["input_tokens"] == 50


def test_cursor_pagination_visits_every_task_once_in_order(service: ServiceProcess, pub: Publisher) -> None:
    for n in range(23):
        publish_task(pub, f"page-{n:02d}", source="pager", created=f"2026-03-01T10:{n:02d}:00Z",
                     final={"cost_usd": n % 5, "duration_seconds": n})  # fmt: skip
    drained(service, pub)
    wait_until(lambda: len(task_ids(service, source="pager", limit=500)) == 23, what="23 tasks indexed")
    for sort, expected in (
        ("-created_at", [f"page-{n:02d}" for n in reversed(range(23))]),
        ("duration_seconds", [f"page-{n:02d}" for n in range(23)]),
        ("-cost_usd", None),
    ):
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            params: dict[str, Any] = {"source": "pager", "limit": 5, "sort": sort}
            if cursor:
                params["cursor"] = cursor
            body = get(service, "/tasks?" + urlencode(params))
            seen += [t["task_id"] for t in body["tasks"]]
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert pages == 5 and len(seen) == 23 and len(set(seen)) == 23, (sort, seen)
        if expected is not None:
            assert seen == expected
        else:
            costs = [get(service, f"/tasks/{t}")["cost_usd"] for t in seen]
            assert costs == sorted(costs, reverse=True)


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("limit=0", 422),
        ("limit=501", 422),
        ("sort=name", 422),
        ("status=done", 422),
        ("since=yesterday", 400),
        ("cursor=not-a-cursor", 400),
        ("q=" + quote("  "), 200),
        ("q=" + quote('* "" *'), 400),
        ("source=" + "x" * 600, 422),
    ],
)
def test_bad_task_list_queries_are_4xx_with_a_message(service: ServiceProcess, query: str, status: int) -> None:
    answer = request(service.port, "/tasks?" + query)

    assert answer.status == status, answer.body
    if status != 200:
        assert answer.json()["detail"]


def test_a_cursor_of_another_sort_order_is_refused(service: ServiceProcess, pub: Publisher) -> None:
    for n in range(3):
        publish_task(pub, f"cur-{n}", source="cursor-test")
    drained(service, pub)
    wait_until(lambda: len(task_ids(service, source="cursor-test")) == 3, what="3 tasks indexed")
    cursor = get(service, "/tasks?source=cursor-test&limit=1")["next_cursor"]

    answer = request(service.port, f"/tasks?source=cursor-test&limit=1&sort=cost_usd&cursor={cursor}")

    assert answer.status == 400 and "cursor" in answer.json()["detail"]


def test_task_summary_unknown_and_unsafe_ids(service: ServiceProcess) -> None:
    assert request(service.port, "/tasks/never-seen").status == 404
    assert request(service.port, "/tasks/never-seen").json()["detail"]
    for path in ("/tasks/%2E%2E", "/tasks/.hidden", "/tasks/a%00b", "/tasks/" + "x" * 129, "/tasks/a%5Cb"):
        answer = request(service.port, path)
        assert answer.status == 400, (path, answer.status)
        assert answer.json()["detail"]


# -- /tasks/{id}/logs -------------------------------------------------------------------------------------------


def test_logs_select_files_and_page_a_jsonl_file(service: ServiceProcess, pub: Publisher) -> None:
    outputs = tuple(f"line {n}" for n in range(37))
    publish_task(pub, "logs-1", outputs=outputs, final={"result": "done"})
    drained(service, pub)

    whole = get(service, "/tasks/logs-1/logs")
    assert set(whole) == {"metadata", "input", "webhook_flow", "agent_output", "user_inputs", "final_result"}
    assert len(whole["agent_output"]) == 39 and whole["webhook_flow"] == [] and whole["user_inputs"] == []
    assert whole["final_result"]["result"] == "done"

    some = get(service, "/tasks/logs-1/logs?files=final_result,agent_output")
    assert list(some) == ["final_result", "agent_output"]
    assert some["agent_output"] == whole["agent_output"]

    pages: list[list[dict[str, Any]]] = []
    after = None
    while True:
        path = "/tasks/logs-1/logs?file=agent_output&limit=10" + (f"&after={after}" if after else "")
        body = get(service, path)
        pages.append(body["records"])
        after = body["next_after"]
        if after is None:
            break
    assert [len(p) for p in pages] == [10, 10, 10, 9]
    assert [r for p in pages for r in p] == whole["agent_output"]

    for bad in (
        "files=bogus",
        "file=metadata",
        "after=1-0",
        "file=agent_output&after=abc",
        "limit=0&file=agent_output",
    ):
        answer = request(service.port, "/tasks/logs-1/logs?" + bad)
        assert 400 <= answer.status < 500, (bad, answer.status)


def test_no_endpoint_reads_outside_the_logs_directory(service: ServiceProcess, tmp_path: Path) -> None:
    paths = [
        "/tasks/%2E%2E/logs",
        "/tasks/..%2F..%2Fetc/logs",
        "/tasks/%2e%2e%2f%2e%2e%2fetc%2fpasswd/logs",
        "/tasks/a%00/logs",
        "/tasks/" + "y" * 300 + "/logs",
        "/tasks/.tasklogger/logs",
        "/tasks/%2E%2E/events",
        "/tasks/.tasklogger/events",
        "/tasks/..%2Fx/logs?file=agent_output",
        "/tasks/%2Ftmp/logs",
    ]
    for path in paths:
        answer = request(service.port, path)
        assert 400 <= answer.status < 500, (path, answer.status, answer.body[:200])
        assert b"root:" not in answer.body


# -- /dead-letters ----------------------------------------------------------------------------------------------


def test_dead_letters_are_listed_with_their_reasons(service: ServiceProcess, pub: Publisher) -> None:
    before = get(service, "/dead-letters?limit=1000")["dead_letters"]
    first = pub.raw({"task_id": "dl-1", "data": "{}"})  # missing type
    second = pub.raw({"type": "task:output", "task_id": "dl-2", "data": "not json"})
    third = pub.event("task:output", task_id="../escape", data={"content": "x"})
    drained(service, pub)

    listed = get(service, "/dead-letters?limit=1000")["dead_letters"][len(before) :]
    assert [(d["id"], d["reason"]) for d in listed] == [
        (first, "missing_type"),
        (second, "invalid_data"),
        (third, "unsafe_task_id"),
    ]
    assert get(service, "/dead-letters?reason=invalid_data")["dead_letters"][-1]["id"] == second
    page = get(service, f"/dead-letters?after={first}&limit=1")
    assert [d["id"] for d in page["dead_letters"]] == [second] and page["next_after"] == second
    assert request(service.port, "/dead-letters?after=../x").status == 400


# -- /livez and /metrics ----------------------------------------------------------------------------------------


def test_livez_and_metrics_json_and_prometheus(service: ServiceProcess, pub: Publisher) -> None:
    publish_task(pub, "metrics-1", outputs=("a", "b"), final={"result": "ok"})
    drained(service, pub)

    assert get(service, "/livez") == {"status": "ok"}
    snapshot = get(service, "/metrics")
    assert {"queue_depth", "queue_lag", "tasks_processed"} <= set(snapshot)
    assert snapshot["queue_lag"] == 0 and snapshot["index"]["enabled"] is True

    by_accept = request(service.port, "/metrics", headers={"Accept": "text/plain"})
    by_path = request(service.port, "/metrics/prometheus")
    openmetrics = request(service.port, "/metrics", headers={"Accept": "application/openmetrics-text"})
    assert by_accept.headers["content-type"].startswith("text/plain")
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.body.rstrip().endswith(b"# EOF")
    for body in (by_accept.body.decode(), by_path.body.decode()):
        values = _samples(body)
        assert values['tasklogger_events_total{type="task:output"}'] >= 2
        assert values["tasklogger_batches_total"] >= 1
        assert values["tasklogger_batch_entries_count"] >= 1
        assert values["tasklogger_fsync_seconds_count"] == values["tasklogger_batch_entries_count"]
        assert values["tasklogger_queue_lag"] == 0 and values["tasklogger_pending"] == 0
        assert values["tasklogger_redis_up"] == 1
        assert "tasklogger_index_pending_tasks" in values and "tasklogger_index_lag_seconds" in values
        assert "tasklogger_dead_letters_total" in body and "tasklogger_errors_total" in body


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_openapi_schema_has_the_response_models(service: ServiceProcess) -> None:
    schema = get(service, "/openapi.json")
    components = schema["components"]["schemas"]

    assert {"TaskSummary", "TaskList", "RecordPage", "DeadLetterPage", "Problem", "Liveness"} <= set(components)
    assert set(components["TaskSummary"]["required"]) >= {"task_id", "status", "events", "first_entry_id"}
    ok = schema["paths"]["/tasks"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/TaskList"}
    assert json.dumps(schema["paths"]["/tasks/{task_id}/events"]["get"]["responses"]["200"]).count("event-stream")


def test_livez_answers_while_redis_is_paused(tmp_path: Path) -> None:
    """/livez answers while Redis is paused (SIGSTOP); /health does not."""
    private = RedisProcess(tmp_path / "r").start()
    proc = ServiceProcess(tmp_path / "logs", private.url).start()
    try:
        private.pause()
        assert request(proc.port, "/livez").status == 200
        wait_until(lambda: proc.get("/health")[0] == 503, timeout=15, what="/health to notice")
        assert request(proc.port, "/livez").json() == {"status": "ok"}
    finally:
        private.resume()
        proc.kill()
        private.kill()

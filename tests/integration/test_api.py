"""The HTTP API of a real ``tasklogger serve`` process: /health, /tasks/{id}/logs and /metrics, the refusal of
unsafe ids and planted symlinks, and the loopback default bind."""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from tasklogger.config import Settings
from tests.support import Publisher, RedisProcess, ServiceProcess, group_drained, wait_until

STREAM = "task_events"
GROUP = "task-logger"
COMPAT_KEYS = {"metadata", "input", "webhook_flow", "agent_output", "user_inputs", "final_result"}
SECRET = "SECRET-OUTSIDE-THE-LOGS-DIR-7f3a"


def _raw_get(port: int, path: str) -> tuple[int, bytes]:
    """GET ``path`` sent exactly as given (no client-side normalisation or quoting)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.putrequest("GET", path, skip_host=False, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture
def service(redis_url: str, logs_dir: Path) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(logs_dir, redis_url).start()
    yield proc
    proc.kill()


# -- /health ----------------------------------------------------------------------------------------------------


def test_health_is_503_while_its_redis_is_stopped_and_recovers(private_redis: RedisProcess, logs_dir: Path) -> None:
    service = ServiceProcess(logs_dir, private_redis.url).start()
    try:
        status, body = service.get("/health")
        assert status == 200 and body["status"] == "ok" and body["redis"] == "ok"

        private_redis.stop()
        wait_until(lambda: service.get("/health")[0] == 503, timeout=15, what="/health to report the outage")
        status, body = service.get("/health")
        assert status == 503
        assert "redis_unreachable" in body["reasons"], body
        status, metrics = service.get("/metrics")
        assert status == 200 and metrics["redis"] == "unreachable"

        private_redis.start()  # same port, same data directory
        wait_until(lambda: service.get("/health")[0] == 200, timeout=20, what="/health to recover by itself")
    finally:
        service.kill()


# -- /tasks/{id}/logs -------------------------------------------------------------------------------------------


def test_task_logs_returns_every_key(
    service: ServiceProcess, publisher: Publisher, client: redis.Redis, logs_dir: Path
) -> None:
    hook = publisher.event("webhook:received", webhook_event_id="wh-1", data={"source": "github"})
    created_hook = publisher.event("webhook:task_created", webhook_event_id="wh-1", data={"task_id": "full"})
    created = publisher.event(
        "task:created", task_id="full", data={"source": "github", "assigned_agent": "coder", "input_message": "hi"}
    )
    context = publisher.event("task:context_built", task_id="full", data={"enriched_prompt": "ctx"})
    output = publisher.event("task:output", task_id="full", data={"content": "working"})
    asked = publisher.event("task:user_input", task_id="full", data={"content": "ok?", "question_type": "confirm"})
    done = publisher.event("task:completed", task_id="full", data={"status": "completed", "cost_usd": "0.25"})
    publisher.event("task:output", task_id="partial", data={"content": "just started"})
    wait_until(lambda: group_drained(client), timeout=20, what="the workload to be consumed")

    status, body = service.get("/tasks/full/logs")
    assert status == 200
    assert set(body) == COMPAT_KEYS
    assert body["metadata"]["task_id"] == "full" and body["metadata"]["agent_type"] == "coder"
    assert body["input"]["input_message"] == "hi" and body["input"]["enriched_prompt"] == "ctx"
    assert [r["id"] for r in body["webhook_flow"]] == [hook, created_hook]
    assert [r["id"] for r in body["agent_output"]] == [created, context, output, done]
    assert [r["id"] for r in body["user_inputs"]] == [asked]
    assert body["final_result"]["status"] == "completed" and body["final_result"]["cost_usd"] == 0.25

    # A task with only some files: the others are null (JSON views) or [] (JSONL files).
    status, body = service.get("/tasks/partial/logs")
    assert status == 200
    assert set(body) == COMPAT_KEYS
    assert body["metadata"] is None and body["input"] is None and body["final_result"] is None
    assert body["webhook_flow"] == [] and body["user_inputs"] == []
    assert [r["data"]["content"] for r in body["agent_output"]] == ["just started"]

    status, _ = service.get("/tasks/no-such-task/logs")
    assert status == 404


UNSAFE_PATHS = [
    "/tasks/../logs",
    "/tasks/%2e%2e/logs",
    "/tasks/%2E%2E/logs",
    "/tasks/./logs",
    "/tasks/a%2Fb/logs",
    "/tasks/..%2F..%2Fetc/logs",
    "/tasks/%00/logs",
    "/tasks/a%00b/logs",
    "/tasks/" + "x" * 300 + "/logs",
    "/tasks/.tasklogger/logs",
    "/tasks/%2etasklogger/logs",
    "/tasks/a%5Cb/logs",
    "/tasks/%0a/logs",
]


def test_unsafe_task_ids_are_refused(
    service: ServiceProcess, publisher: Publisher, client: redis.Redis, logs_dir: Path
) -> None:
    # Give the state directory something a traversal could find.
    publisher.event("webhook:received", webhook_event_id="wh-secret", data={"source": SECRET})
    publisher.raw({"type": "task:output", "task_id": "..", "data": json.dumps({"content": SECRET})})
    wait_until(lambda: group_drained(client), timeout=20, what="the entries to be consumed")
    assert (logs_dir / ".tasklogger" / "dead-letters.jsonl").exists()

    for path in UNSAFE_PATHS:
        status, body = _raw_get(service.port, path)
        assert 400 <= status < 500 and status in (400, 404, 422), (path, status, body[:200])
        assert SECRET.encode() not in body, path
        assert b'"agent_output"' not in body, path


def test_a_symlink_out_of_the_logs_dir_is_never_followed(
    service: ServiceProcess, publisher: Publisher, client: redis.Redis, logs_dir: Path, tmp_path: Path
) -> None:
    publisher.event("task:output", task_id="real", data={"content": "mine"})
    wait_until(lambda: group_drained(client), timeout=20, what="the entry to be consumed")

    # A directory outside the logs directory that looks exactly like a task.
    outside = tmp_path / "outside-task"
    outside.mkdir()
    (outside / "metadata.json").write_text(json.dumps({"task_id": "evil", "secret": SECRET}))
    (outside / "03-agent-output.jsonl").write_text(json.dumps({"seq": 1, "id": "1-0", "secret": SECRET}) + "\n")

    os.symlink("/etc", logs_dir / "evil")
    os.symlink(outside, logs_dir / "evil2")
    os.symlink("../outside-task", logs_dir / "evil3")
    for task in ("evil", "evil2", "evil3"):
        status, body = _raw_get(service.port, f"/tasks/{task}/logs")
        assert status == 404, (task, status, body[:200])
        assert SECRET.encode() not in body and b"root:" not in body

    status, body = _raw_get(service.port, "/tasks/real/logs")
    assert status == 200 and json.loads(body)["agent_output"][0]["data"] == {"content": "mine"}


def test_a_symlinked_file_in_a_task_dir_is_treated_as_absent(
    service: ServiceProcess, publisher: Publisher, client: redis.Redis, logs_dir: Path, tmp_path: Path
) -> None:
    publisher.event("task:output", task_id="real", data={"content": "mine"})
    wait_until(lambda: group_drained(client), timeout=20, what="the entry to be consumed")
    secret_json = tmp_path / "secret.json"
    secret_json.write_text(json.dumps({"secret": SECRET}))
    secret_jsonl = tmp_path / "secret.jsonl"
    secret_jsonl.write_text(json.dumps({"seq": 1, "id": "1-0", "secret": SECRET}) + "\n")

    # Files of the task planted as symlinks to files outside the logs directory.
    os.symlink(secret_json, logs_dir / "real" / "metadata.json")
    os.symlink(secret_jsonl, logs_dir / "real" / "03-user-inputs.jsonl")
    status, body = _raw_get(service.port, "/tasks/real/logs")

    assert SECRET.encode() not in body
    # Never followed, and not a server error either: the task's real files are still served, the planted ones
    # are absent (or the request is refused as a whole with a 4xx).
    assert status < 500, (status, body[:300])
    if status == 200:
        doc = json.loads(body)
        assert doc["metadata"] is None and doc["user_inputs"] == []
        assert doc["agent_output"][0]["data"] == {"content": "mine"}


# -- /metrics ---------------------------------------------------------------------------------------------------


def test_metrics_after_a_known_workload(service: ServiceProcess, publisher: Publisher, client: redis.Redis) -> None:
    status, before = service.get("/metrics")
    assert status == 200
    assert before["tasks_processed"] == 0 and before["events_written"] == 0 and before["dead_letters"] == 0

    for task in ("m1", "m2", "m3"):
        publisher.event("task:created", task_id=task, data={"source": "jira"})
        publisher.event("task:output", task_id=task, data={"content": "x"})
    publisher.event("task:completed", task_id="m1", data={"status": "completed"})
    publisher.event("task:failed", task_id="m2", data={"error": "boom"})
    publisher.event("webhook:received", webhook_event_id="wh-m", data={"source": "slack"})
    publisher.raw({"type": "task:output", "task_id": "m3", "data": "not json"})
    publisher.raw({"task_id": "m3", "data": "{}"})
    publisher.raw({"type": "task:output", "task_id": "../m3", "data": "{}"})
    written, dead = 6 + 2 + 1, 3
    wait_until(lambda: group_drained(client), timeout=20, what="the workload to be consumed")

    status, metrics = service.get("/metrics")
    assert status == 200
    assert metrics["queue_depth"] == written + dead == client.xlen(STREAM)
    assert metrics["queue_lag"] == 0
    assert metrics["pending"] == 0
    assert metrics["tasks_processed"] == 2  # m1 completed, m2 failed; m3 still running
    assert metrics["events_written"] == written
    assert metrics["dead_letters"] == dead
    assert metrics["dead_letters_by_reason"] == {"invalid_data": 1, "missing_type": 1, "unsafe_task_id": 1}


def test_metrics_queue_lag_and_pending_are_the_groups(redis_url: str, client: redis.Redis, logs_dir: Path) -> None:
    # The API alone (no consumer): a group that read 4 of 10 entries and acknowledged 1 of them.
    for n in range(10):
        client.xadd(STREAM, {"type": "task:output", "task_id": "q", "data": json.dumps({"n": n})})
    client.xgroup_create(STREAM, GROUP, id="0")
    read = client.xreadgroup(GROUP, "someone", {STREAM: ">"}, count=4)
    client.xack(STREAM, GROUP, read[0][1][0][0])
    api = ServiceProcess(logs_dir, redis_url, args=("api",)).start()
    try:
        status, metrics = api.get("/metrics")
    finally:
        api.kill()
    assert status == 200
    assert metrics["queue_depth"] == 10
    assert metrics["queue_lag"] == 6
    assert metrics["pending"] == 3
    assert metrics["tasks_processed"] is None
    assert client.xlen(STREAM) == 10 and client.xpending(STREAM, GROUP)["pending"] == 3  # the API wrote nothing


# -- bind address -----------------------------------------------------------------------------------------------


def test_default_bind_is_loopback(service: ServiceProcess) -> None:
    assert Settings().host == "127.0.0.1"
    assert Settings.from_env({}).host == "127.0.0.1"
    assert "TASKLOGGER_HOST" not in service.env

    assert service.get("/health")[0] == 200  # it answers on 127.0.0.1
    assert service.process is not None
    listening = [
        c for c in psutil.Process(service.process.pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
    ]
    assert [(c.laddr.ip, c.laddr.port) for c in listening] == [("127.0.0.1", service.port)]

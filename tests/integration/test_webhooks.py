"""Webhook steps that arrive before their task id is known: buffered durably under the state directory, moved in
stream order into the task's 02-webhook-flow.jsonl once a webhook-keyed event names the task, never duplicated,
never dropped (webhook:skipped flows stay buffered), surviving a kill -9, and in bounded memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
import redis

from tests.support import Publisher, ServiceProcess, consumer_run, group_drained, settings_for, wait_until

STREAM = "task_events"
GROUP = "task-logger"


def _records(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def _buffer(logs_dir: Path, webhook_id: str) -> Path | None:
    """The buffer file of a webhook id, wherever the store shards it; None if there is none."""
    found = list((logs_dir / ".tasklogger" / "webhooks").glob(f"*/{webhook_id}.jsonl"))
    assert len(found) <= 1, found
    return found[0] if found else None


def _flow(logs_dir: Path, task_id: str) -> list[dict[str, Any]]:
    return _records(logs_dir / task_id / "02-webhook-flow.jsonl")


def _assert_nothing_pending(client: redis.Redis) -> None:
    assert client.xpending(STREAM, GROUP)["pending"] == 0
    assert group_drained(client)


def _steps(publisher: Publisher, webhook_id: str, source: str = "github") -> list[str]:
    return [
        publisher.event("webhook:received", webhook_event_id=webhook_id, data={"source": source, "payload_size": 10}),
        publisher.event(
            "webhook:validated", webhook_event_id=webhook_id, data={"source": source, "signature_valid": 1}
        ),
        publisher.event("webhook:matched", webhook_event_id=webhook_id, data={"matched_handler": "mention"}),
    ]


@pytest.mark.parametrize("drain_between", [True, False], ids=["across-batches", "one-batch"])
def test_buffered_steps_move_to_the_task_on_task_created(
    redis_url: str, publisher: Publisher, client: redis.Redis, logs_dir: Path, drain_between: bool
) -> None:
    settings = settings_for(redis_url, logs_dir)
    # Two webhooks interleaved, so that "in stream order" is per webhook, not merely per stream.
    early_a, early_b = [], []
    for step in ("webhook:received", "webhook:validated", "webhook:matched"):
        early_a.append(publisher.event(step, webhook_event_id="wh-a", data={"source": "github"}))
        early_b.append(publisher.event(step, webhook_event_id="wh-b", data={"source": "jira"}))

    if drain_between:
        with consumer_run(settings) as run:
            run.wait_drained()
        buffer_a, buffer_b = _buffer(logs_dir, "wh-a"), _buffer(logs_dir, "wh-b")
        assert buffer_a is not None and buffer_b is not None
        assert [r["id"] for r in _records(buffer_a)] == early_a
        assert [r["id"] for r in _records(buffer_b)] == early_b
        assert not (logs_dir / "task-a").exists()

    created_a = publisher.event("webhook:task_created", webhook_event_id="wh-a", data={"task_id": "task-a"})
    created_b = publisher.event("webhook:task_created", webhook_event_id="wh-b", task_id="task-b", data={})
    # Steps after the adoption carry no task id, only the webhook id: they go to the task as well.
    late_a = publisher.event("webhook:payload", webhook_event_id="wh-a", data={"payload": "body"})
    late_b = publisher.event("notification:ops", webhook_event_id="wh-b", data={"channel": "#ops"})

    with consumer_run(settings) as run:
        run.wait_drained()
        assert run.consumer.stats.dead_letters == 0
    _assert_nothing_pending(client)

    flow_a, flow_b = _flow(logs_dir, "task-a"), _flow(logs_dir, "task-b")
    assert [r["id"] for r in flow_a] == [*early_a, created_a, late_a]
    assert [r["id"] for r in flow_b] == [*early_b, created_b, late_b]
    assert [r["seq"] for r in flow_a] == list(range(1, len(flow_a) + 1))
    assert [r["type"] for r in flow_a] == [
        "webhook:received", "webhook:validated", "webhook:matched", "webhook:task_created", "webhook:payload",
    ]  # fmt: skip
    assert all(r["webhook_event_id"] == "wh-a" for r in flow_a)
    assert flow_a[0]["data"] == {"source": "github"}
    # Moved, not copied: the buffers are gone.
    assert _buffer(logs_dir, "wh-a") is None and _buffer(logs_dir, "wh-b") is None


def test_a_later_webhook_event_carrying_task_id_adopts_the_buffer(
    redis_url: str, publisher: Publisher, client: redis.Redis, logs_dir: Path
) -> None:
    settings = settings_for(redis_url, logs_dir)
    early = _steps(publisher, "wh-r")
    with consumer_run(settings) as run:
        run.wait_drained()
    assert _buffer(logs_dir, "wh-r") is not None

    # No webhook:task_created at all: response:immediate is the first event to name the task (in its data).
    response = publisher.event(
        "response:immediate", webhook_event_id="wh-r", data={"task_id": "task-r", "response_type": "ack"}
    )
    notification = publisher.event("notification:ops", webhook_event_id="wh-r", data={"task_id": "task-r"})
    after = publisher.event("webhook:payload", webhook_event_id="wh-r", data={"payload": "x"})
    with consumer_run(settings) as run:
        run.wait_drained()
    _assert_nothing_pending(client)

    assert [r["id"] for r in _flow(logs_dir, "task-r")] == [*early, response, notification, after]
    assert _buffer(logs_dir, "wh-r") is None


def test_redelivery_after_adoption_writes_nothing_twice(
    redis_url: str, publisher: Publisher, client: redis.Redis, logs_dir: Path
) -> None:
    settings = settings_for(redis_url, logs_dir)
    early = _steps(publisher, "wh-d")
    with consumer_run(settings) as run:
        run.wait_drained()
    created = publisher.event("webhook:task_created", webhook_event_id="wh-d", data={"task_id": "task-d"})
    late = publisher.event("webhook:payload", webhook_event_id="wh-d", data={"payload": "x"})
    with consumer_run(settings) as run:
        run.wait_drained()
    before = (logs_dir / "task-d" / "02-webhook-flow.jsonl").read_bytes()

    # Every entry delivered again, to a cold store (the buffered steps now resolve through the stored mapping).
    client.xgroup_setid(STREAM, GROUP, "0")
    with consumer_run(settings) as run:
        run.wait_drained()
        assert run.consumer.stats.events_written == 0
    _assert_nothing_pending(client)

    assert (logs_dir / "task-d" / "02-webhook-flow.jsonl").read_bytes() == before
    assert [r["id"] for r in _flow(logs_dir, "task-d")] == [*early, created, late]
    assert _buffer(logs_dir, "wh-d") is None


def test_skipped_flows_stay_buffered(redis_url: str, publisher: Publisher, client: redis.Redis, logs_dir: Path) -> None:
    settings = settings_for(redis_url, logs_dir)
    flows = {}
    for n in range(3):
        wid = f"wh-skip-{n}"
        flows[wid] = [
            publisher.event("webhook:received", webhook_event_id=wid, data={"source": "slack"}),
            publisher.event("webhook:skipped", webhook_event_id=wid, data={"reason": "bot message"}),
        ]
    with consumer_run(settings) as run:
        run.wait_drained()
    # A restart (cold caches) and more traffic change nothing about them.
    publisher.event("task:created", task_id="unrelated", data={"source": "slack"})
    with consumer_run(settings) as run:
        run.wait_drained()
    _assert_nothing_pending(client)

    for wid, ids in flows.items():
        buffer = _buffer(logs_dir, wid)
        assert buffer is not None, wid
        records = _records(buffer)
        assert [r["id"] for r in records] == ids
        assert records[-1]["type"] == "webhook:skipped" and records[-1]["data"] == {"reason": "bot message"}
    assert sorted(p.name for p in logs_dir.iterdir()) == [".tasklogger", "unrelated"]


def test_buffered_steps_survive_kill_9_of_the_service(
    redis_url: str, publisher: Publisher, client: redis.Redis, logs_dir: Path
) -> None:
    service = ServiceProcess(logs_dir, redis_url).start()
    try:
        steps_x, steps_y = [], []
        for step in ("webhook:received", "webhook:validated", "webhook:matched", "webhook:payload"):
            steps_x.append(publisher.event(step, webhook_event_id="wh-x", data={"source": "github"}))
            steps_y.append(publisher.event(step, webhook_event_id="wh-y", data={"source": "sentry"}))
        wait_until(lambda: group_drained(client), timeout=20, what="the webhook steps to be acknowledged")
        service.kill()  # SIGKILL: no chance to flush anything
        assert service.process is not None and service.process.returncode == -9
    finally:
        service.kill()

    # Acknowledged means on disk: the buffers are there without the process.
    for wid, ids in (("wh-x", steps_x), ("wh-y", steps_y)):
        buffer = _buffer(logs_dir, wid)
        assert buffer is not None, wid
        assert [r["id"] for r in _records(buffer)] == ids

    restarted = ServiceProcess(logs_dir, redis_url).start()
    try:
        created_x = publisher.event("webhook:task_created", webhook_event_id="wh-x", data={"task_id": "task-x"})
        created_y = publisher.event("webhook:task_created", webhook_event_id="wh-y", data={"task_id": "task-y"})
        wait_until(lambda: group_drained(client), timeout=20, what="the task_created events to be acknowledged")
        status, body = restarted.get("/tasks/task-x/logs")
        assert status == 200
        assert [r["id"] for r in body["webhook_flow"]] == [*steps_x, created_x]
    finally:
        restarted.kill()

    assert [r["id"] for r in _flow(logs_dir, "task-x")] == [*steps_x, created_x]
    assert [r["id"] for r in _flow(logs_dir, "task-y")] == [*steps_y, created_y]
    assert _buffer(logs_dir, "wh-x") is None and _buffer(logs_dir, "wh-y") is None
    _assert_nothing_pending(client)


# -- memory -------------------------------------------------------------------------------------------------------

SKIPPED_FLOWS = 50_000
WARM_UP_FLOWS = 2_000
MAX_GROWTH_BYTES = 20 * 1024 * 1024


def _publish_skipped(client: redis.Redis, start: int, stop: int) -> None:
    """Flows ``start`` to ``stop``: webhook:received then webhook:skipped, each flow its own webhook id."""
    pipe = client.pipeline(transaction=False)
    for n in range(start, stop):
        wid = f"skip-{n:06d}"
        for event_type, data in (
            ("webhook:received", {"source": "slack", "event_type": "message", "payload_size": 512}),
            ("webhook:skipped", {"source": "slack", "event_type": "message", "reason": "bot message"}),
        ):
            fields = {"type": event_type, "timestamp": "2026-01-31T12:00:00Z", "webhook_event_id": wid}
            pipe.xadd(STREAM, {**fields, "data": json.dumps(data)})
        if (n - start) % 500 == 499:
            pipe.execute()
    pipe.execute()


def _rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


@pytest.mark.slow
def test_memory_stays_flat_over_50k_skipped_flows(redis_url: str, client: redis.Redis, logs_dir: Path) -> None:
    service = ServiceProcess(logs_dir, redis_url).start()
    try:
        assert service.process is not None
        pid = service.process.pid
        _publish_skipped(client, 0, WARM_UP_FLOWS)
        wait_until(lambda: group_drained(client), timeout=30, what="the warm-up flows to drain")
        assert service.get("/health")[0] == 200
        baseline = _rss(pid)

        _publish_skipped(client, WARM_UP_FLOWS, SKIPPED_FLOWS)
        peak = baseline

        def drained() -> bool:
            nonlocal peak
            peak = max(peak, _rss(pid))
            return group_drained(client)

        wait_until(drained, timeout=80, interval=0.2, what="the 50k skipped flows to drain")
        final = _rss(pid)
        status, metrics = service.get("/metrics")
        assert status == 200
        assert metrics["events_written"] == 2 * SKIPPED_FLOWS and metrics["dead_letters"] == 0
    finally:
        service.kill()

    growth = final - baseline
    print(f"RSS baseline {baseline / 2**20:.1f} MB, peak {peak / 2**20:.1f} MB, final {final / 2**20:.1f} MB")
    assert growth < MAX_GROWTH_BYTES, f"RSS grew {growth / 2**20:.1f} MB (baseline {baseline / 2**20:.1f} MB)"
    assert peak - baseline < 2 * MAX_GROWTH_BYTES, f"peak {peak / 2**20:.1f} MB, baseline {baseline / 2**20:.1f} MB"
    # Never dropped: every flow is still buffered on disk.
    buffers = list((logs_dir / ".tasklogger" / "webhooks").glob("*/skip-*.jsonl"))
    assert len(buffers) == SKIPPED_FLOWS

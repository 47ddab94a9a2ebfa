"""Exactly once against a real redis-server and real files: every event type lands in its file once, in stream
order, with an intact hash chain, whatever Redis redelivers (a replayed group, a crash between commit and XACK,
pending entries of this consumer or of a dead one, a destroyed group) and whatever a crash left in a file (a torn
tail, a garbage line)."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from tasklogger.config import STATE_DIR_NAME, Settings
from tasklogger.projector import project
from tasklogger.store import Store
from tasklogger.wire import decode
from tests.faults import chain, records_on_disk
from tests.support import Publisher, consumer_run, settings_for, wait_until

STREAM = "task_events"
GROUP = "task-logger"
FLOW = "02-webhook-flow.jsonl"
AGENT = "03-agent-output.jsonl"
USER = "03-user-inputs.jsonl"
DEAD = f"{STATE_DIR_NAME}/dead-letters.jsonl"

# -- helpers: what is on disk, what Redis still owes ---------------------------------------------------------------


def ids_in(logs_dir: Path, rel: str) -> list[str]:
    return [str(body["id"]) for body in chain(logs_dir, rel)]


def id_counts(logs_dir: Path) -> Counter[str]:
    """How many records carry each stream id, over every JSONL file."""
    counts: Counter[str] = Counter()
    for bodies in records_on_disk(logs_dir).values():
        counts.update(str(body["id"]) for body in bodies)
    return counts


def dead_letters(logs_dir: Path) -> dict[str, dict[str, Any]]:
    if not (logs_dir / DEAD).exists():
        return {}
    return {str(body["id"]): body for body in chain(logs_dir, DEAD)}


def pending(client: redis.Redis, consumer: str | None = None) -> int:
    if consumer is None:
        return int(client.xpending(STREAM, GROUP)["pending"])
    return len(client.xpending_range(STREAM, GROUP, min="-", max="+", count=100_000, consumername=consumer))


def delivery_count(client: redis.Redis, entry_id: str) -> int:
    rows = client.xpending_range(STREAM, GROUP, min=entry_id, max=entry_id, count=1)
    return int(rows[0]["times_delivered"]) if rows else 0


def snapshot(logs_dir: Path) -> dict[str, bytes]:
    """Every regular file of the task directories (not the service's own state), by relative path."""
    return {
        p.relative_to(logs_dir).as_posix(): p.read_bytes()
        for p in sorted(logs_dir.rglob("*"))
        if p.is_file() and not p.relative_to(logs_dir).as_posix().startswith(STATE_DIR_NAME)
    }


def webhook_buffer(logs_dir: Path, webhook_id: str) -> Path:
    shard = hashlib.sha1(webhook_id.encode()).hexdigest()[:2]
    return logs_dir / STATE_DIR_NAME / "webhooks" / shard / f"{webhook_id}.jsonl"


def entries_of(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    return list(reply[0][1]) if reply else []


def commit_without_ack(settings: Settings, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
    """What a consumer did before it died between the store's commit and its XACK: the entries are durable on
    disk, and still pending in the group."""
    store = Store(settings.logs_dir)
    store.open()
    try:
        batch = store.begin()
        for raw_id, fields in entries:
            event = decode(raw_id, fields, max_entry_bytes=settings.max_entry_bytes)
            batch.apply(event, project(event, batch.view(event)))
        batch.commit()
    finally:
        store.close()


def read_as(client: redis.Redis, consumer: str, count: int, start: str = ">") -> list[str]:
    """XREADGROUP as ``consumer`` from a raw client, never acknowledged (a consumer that died holding them)."""
    return [eid.decode() for eid, _ in entries_of(client.xreadgroup(GROUP, consumer, {STREAM: start}, count=count))]


def publish_outputs(publisher: Publisher, task_id: str, n: int, start: int = 0) -> list[str]:
    return [
        publisher.event("task:output", task_id=task_id, data={"content": f"line {i}", "task_id": task_id})
        for i in range(start, start + n)
    ]


# -- a realistic task: every event type of WIRE-FORMAT.md ---------------------------------------------------------


def publish_realistic_task(publisher: Publisher, task_id: str, webhook_id: str) -> dict[str, Any]:
    """Publish one task's whole life; returns the stream ids each task file must hold, in stream order, and
    under ``sent`` the data sent with each entry."""
    expect: dict[str, Any] = {FLOW: [], AGENT: [], USER: []}
    sent: dict[str, dict[str, Any]] = {}

    def webhook(kind: str, data: dict[str, Any], **kw: Any) -> None:
        eid = publisher.event(kind, webhook_event_id=webhook_id, data=data, **kw)
        expect[FLOW].append(eid)
        sent[eid] = data

    def task(kind: str, data: dict[str, Any], file: str = AGENT, **kw: Any) -> None:
        eid = publisher.event(kind, task_id=task_id, data=data, **kw)
        expect[file].append(eid)
        sent[eid] = data

    webhook("webhook:received", {"source": "github", "event_type": "issue_comment", "payload_size": "18734"})
    webhook("webhook:validated", {"source": "github", "signature_valid": True})
    webhook(
        "webhook:matched",
        {"source": "github", "event_type": "issue_comment", "matched_handler": "github_issue_comment"},
        timestamp="2026-01-31T12:00:00.123456+00:00",
    )
    webhook(
        "webhook:payload",
        {"source": "github", "event_type": "issue_comment", "payload": {"comment": {"body": "@agent fix " * 3000}}},
    )
    webhook(
        "webhook:task_created",
        {"task_id": task_id, "source": "github", "event_type": "issue_comment", "input_message": "fix the bug"},
    )
    task(
        "task:created",
        {
            "task_id": task_id, "source": "github", "assigned_agent": "brain", "input_message": "fix the bug",
            "user_id": "u-17", "machine_id": "m-3", "session_id": "s-9", "conversation_id": "c-5",
        },
    )  # fmt: skip
    webhook("response:immediate", {"task_id": task_id, "source": "github", "response_type": "ack", "target": "pr#4"})
    webhook("notification:ops", {"task_id": task_id, "source": "github", "notification_type": "x", "channel": "#ops"})
    task("task:started", {"session_id": "s-9", "conversation_id": "c-5"})
    task(
        "task:context_built",
        {"enriched_prompt": "p" * 50_000, "flow_id": "f-1", "conversation_id": "c-6", "source_metadata": {"pr": 4}},
    )
    task("task:thinking", {"content": "let me look at the stack trace"})
    task("task:tool_call", {"name": "Read", "input": {"path": "src/app.py"}, "_tool_use_id": "toolu_01"})
    task("knowledge:query", {"query": "retry policy"}, timestamp=None)  # ts from the entry id
    task("knowledge:result", {"results": [{"doc": "adr-7", "score": 0.91}]})
    task("knowledge:tool_call", {"name": "search_kb", "input": {"q": "retry"}})
    task("knowledge:context_used", {"docs": ["adr-7"]})
    task("task:tool_result", {"name": "Read", "content": "r" * 5000, "is_error": "false"})
    task("task:output", {"content": "I found the bug."})
    task("task:user_input", {"content": "go ahead", "question_type": "approval"}, file=USER)
    task("task:raw_output", {"raw_output": "z" * 200_000})
    task("task:metrics", {"cost_usd": "0.12", "input_tokens": "1200", "output_tokens": 300})
    task("agent:heartbeat", {"alive": True})  # a type nobody announced: kept, not dropped
    task("task:response_posted", {"method": "mcp", "source": "github", "mcp_detected": True, "fallback_posted": False})
    task(
        "task:completed",
        {
            "status": "completed", "result": "fixed", "cost_usd": "0.4213", "input_tokens": "15000",
            "output_tokens": 2200, "duration_seconds": "93.5", "exit_code": "0",
        },
    )  # fmt: skip
    expect["sent"] = sent
    return expect


def assert_realistic_task(
    logs_dir: Path, task_id: str, webhook_id: str, expect: dict[str, Any], later: list[str] | None = None
) -> None:
    """The task's files hold exactly the expected records (then ``later`` ones in 03-agent-output.jsonl)."""
    task_dir = logs_dir / task_id
    sent: dict[str, dict[str, Any]] = expect["sent"]
    for name in (FLOW, AGENT, USER):
        bodies = chain(logs_dir, f"{task_id}/{name}")
        if name == AGENT and later:
            assert [b["id"] for b in bodies[-len(later) :]] == later
            bodies = bodies[: -len(later)]
        assert [b["id"] for b in bodies] == expect[name], name
        for body in bodies:
            assert body["data"] == sent[body["id"]], f"{name}: {body['type']} data changed"
    flow = chain(logs_dir, f"{task_id}/{FLOW}")
    assert [b["type"] for b in flow] == [
        "webhook:received", "webhook:validated", "webhook:matched", "webhook:payload", "webhook:task_created",
        "response:immediate", "notification:ops",
    ]  # fmt: skip
    assert all(b["webhook_event_id"] == webhook_id for b in flow)
    assert flow[2]["ts"] == "2026-01-31T12:00:00.123456+00:00" and "ts_flag" not in flow[2]
    agent = chain(logs_dir, f"{task_id}/{AGENT}")[: len(expect[AGENT])]
    assert [b["type"] for b in agent] == [
        "task:created", "task:started", "task:context_built", "task:thinking", "task:tool_call", "knowledge:query",
        "knowledge:result", "knowledge:tool_call", "knowledge:context_used", "task:tool_result", "task:output",
        "task:raw_output", "task:metrics", "agent:heartbeat", "task:response_posted", "task:completed",
    ]  # fmt: skip
    assert all(b["task_id"] == task_id for b in agent)
    query = next(b for b in agent if b["type"] == "knowledge:query")
    assert query["ts_flag"] == "missing" and query["ts"].startswith(time.strftime("%Y-", time.gmtime()))
    assert [b["type"] for b in chain(logs_dir, f"{task_id}/{USER}")] == ["task:user_input"]

    metadata = orjson.loads((task_dir / "metadata.json").read_bytes())
    assert metadata["task_id"] == task_id and metadata["source"] == "github" and metadata["agent_type"] == "brain"
    assert metadata["user_id"] == "u-17" and metadata["machine_id"] == "m-3"
    assert metadata["stream_id"] == expect[AGENT][0]
    inputs = orjson.loads((task_dir / "01-input.json").read_bytes())
    assert inputs["input_message"] == "fix the bug" and inputs["enriched_prompt"] == "p" * 50_000
    assert inputs["conversation_id"] == "c-6" and inputs["source_metadata"] == {"pr": 4}
    final = orjson.loads((task_dir / "04-final-result.json").read_bytes())
    assert final["status"] == "completed" and final["result"] == "fixed"
    assert (final["cost_usd"], final["input_tokens"], final["output_tokens"]) == (0.4213, 15000, 2200)
    assert (final["duration_seconds"], final["exit_code"]) == (93.5, 0)
    assert final["stream_id"] == expect[AGENT][-1]
    # The webhook's buffer was moved into the task, not copied.
    assert not webhook_buffer(logs_dir, webhook_id).exists()


# -- the mapping, end to end ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("batch_size", "sync_mode"), [(1, "fs"), (4, "file"), (4, "fs"), (1000, "file"), (1000, "fs")])
def test_every_event_type_lands_in_its_file_once_in_stream_order(
    redis_url: str, client: redis.Redis, publisher: Publisher, logs_dir: Path, batch_size: int, sync_mode: str
) -> None:
    expect = publish_realistic_task(publisher, "gh-4711", "0d7c1c6e-1f61-4a8e-9d59-3b0f1a2c4e11")
    # A webhook that never becomes a task stays in its (durable) buffer.
    skipped = publisher.event(
        "webhook:skipped", webhook_event_id="wh-skip", data={"source": "jira", "event_type": "x", "reason": "bot"}
    )
    created = publisher.event("task:created", task_id="jira-9", data={"source": "jira", "agent_type": "planner"})
    failed = publisher.event("task:failed", task_id="jira-9", data={"error": "boom", "cost_usd": "0.01"})

    with consumer_run(settings_for(redis_url, logs_dir, max_batch_size=batch_size, sync_mode=sync_mode)) as run:
        assert run.store.fs_sync == (sync_mode == "fs")
        run.wait_drained()
        assert run.consumer.stats.dead_letters == 0

    assert_realistic_task(logs_dir, "gh-4711", "0d7c1c6e-1f61-4a8e-9d59-3b0f1a2c4e11", expect)
    assert ids_in(logs_dir, webhook_buffer(logs_dir, "wh-skip").relative_to(logs_dir).as_posix()) == [skipped]
    assert ids_in(logs_dir, f"jira-9/{AGENT}") == [created, failed]
    final = orjson.loads((logs_dir / "jira-9" / "04-final-result.json").read_bytes())
    assert final["status"] == "failed" and final["error"] == "boom" and final["cost_usd"] == 0.01
    counts = id_counts(logs_dir)
    assert sorted(counts) == sorted(publisher.ids), "every published entry is in exactly one record"
    assert set(counts.values()) == {1}
    assert not list(logs_dir.rglob(".*.tmp"))
    assert pending(client) == 0


# -- redelivery ----------------------------------------------------------------------------------------------------


def test_whole_stream_redelivered_writes_nothing_twice(
    redis_url: str, client: redis.Redis, publisher: Publisher, logs_dir: Path
) -> None:
    expect = publish_realistic_task(publisher, "t-replay", "wh-replay")
    bad = publisher.raw({"data": "{}", "task_id": "t-replay"})  # no type: dead-lettered once, not twice
    total = len(publisher.ids)
    settings = settings_for(redis_url, logs_dir, consumer_name="c-replay", max_batch_size=5)
    with consumer_run(settings) as run:
        run.wait_drained()
        before = snapshot(logs_dir)
        skipped_before = run.consumer.stats.duplicates_skipped

        # The group forgets it ever delivered anything: every entry comes again as a new delivery.
        client.xgroup_setid(STREAM, GROUP, "0")
        wait_until(
            lambda: run.consumer.stats.duplicates_skipped >= skipped_before + total,
            timeout=20,
            what="the replayed entries to be skipped",
        )
        run.wait_drained()
        assert run.consumer.stats.duplicates_skipped == skipped_before + total
        assert snapshot(logs_dir) == before

    # Replayed again, this time left pending on the consumer's own name (delivered, never acknowledged), and
    # part of it claimed explicitly (XCLAIM) from another consumer onto ours.
    client.xgroup_setid(STREAM, GROUP, "0")
    mine = read_as(client, "c-replay", 10)
    theirs = read_as(client, "c-other", 1000)
    client.xclaim(STREAM, GROUP, "c-replay", 0, theirs[:5])
    assert pending(client, "c-replay") == 15
    with consumer_run(settings_for(redis_url, logs_dir, consumer_name="c-replay", claim_idle_ms=100,
                                   claim_interval_s=0.1)) as run:  # fmt: skip
        run.wait_drained()
        assert run.consumer.stats.events_written == 0
        assert run.consumer.stats.duplicates_skipped == total
    assert mine and snapshot(logs_dir) == before
    assert_realistic_task(logs_dir, "t-replay", "wh-replay", expect)
    assert dead_letters(logs_dir)[bad]["reason"] == "missing_type"
    assert set(id_counts(logs_dir).values()) == {1}
    assert pending(client) == 0


# -- a crash between the store's commit and the XACK -----------------------------------------------------------------


def test_crash_after_commit_before_ack_resumes_own_pending(
    redis_url: str, client: redis.Redis, publisher: Publisher, logs_dir: Path
) -> None:
    settings = settings_for(redis_url, logs_dir, consumer_name="c-crash", max_batch_size=7)
    expect = publish_realistic_task(publisher, "t-crash", "wh-crash")
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    in_flight = entries_of(client.xreadgroup(GROUP, "c-crash", {STREAM: ">"}, count=len(publisher.ids)))
    commit_without_ack(settings, in_flight)  # ... and the process dies before XACK
    assert pending(client, "c-crash") == len(in_flight)
    committed = snapshot(logs_dir)
    later = publish_outputs(publisher, "t-crash", 5)

    with consumer_run(settings) as run:
        run.wait_drained()
        assert run.consumer.stats.duplicates_skipped == len(in_flight)
        assert run.consumer.stats.events_written == len(later)

    assert pending(client) == 0
    assert client.xpending_range(STREAM, GROUP, min="-", max="+", count=10) == []
    assert_realistic_task(logs_dir, "t-crash", "wh-crash", expect, later=later)
    for name in (FLOW, USER, "metadata.json", "01-input.json", "04-final-result.json"):
        assert (logs_dir / "t-crash" / name).read_bytes() == committed[f"t-crash/{name}"], name
    assert set(id_counts(logs_dir).values()) == {1}


def test_crash_in_the_middle_of_a_batch_write(
    redis_url: str, client: redis.Redis, publisher: Publisher, logs_dir: Path
) -> None:
    """The first half of a batch made it to disk, the next record only half: the restart keeps each event once."""
    settings = settings_for(redis_url, logs_dir, consumer_name="c-torn")
    published = publish_outputs(publisher, "t-torn", 20)
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    in_flight = entries_of(client.xreadgroup(GROUP, "c-torn", {STREAM: ">"}, count=20))
    commit_without_ack(settings, in_flight[:8])
    path = logs_dir / "t-torn" / AGENT
    with path.open("ab") as f:
        f.write(b'{"seq":9,"id":"' + in_flight[8][0] + b'","type":"task:out')  # died in the middle of write()

    with consumer_run(settings) as run:
        run.wait_drained()
        assert run.consumer.stats.duplicates_skipped == 8
        assert run.consumer.stats.events_written == 12

    assert ids_in(logs_dir, f"t-torn/{AGENT}") == published
    assert pending(client) == 0


# -- damaged tails --------------------------------------------------------------------------------------------------


def test_torn_tail_is_cut_before_the_next_append(
    redis_url: str, client: redis.Redis, publisher: Publisher, logs_dir: Path
) -> None:
    first = publish_outputs(publisher, "t-tail", 4)
    with consumer_run(settings_for(redis_url, logs_dir)) as run:
        run.wait_drained()
    path = logs_dir / "t-tail" / AGENT
    whole = path.read_bytes()
    last_line = whole.splitlines(keepends=True)[-1]
    with path.open("ab") as f:
        f.write(last_line[: len(last_line) // 2])  # half a record, no newline

    second = publish_outputs(publisher, "t-tail", 4, start=4)
    with consumer_run(settings_for(redis_url, logs_dir)) as run:
        run.wait_drained()

    data = path.read_bytes()
    assert data.startswith(whole), "the records before the torn tail are untouched"
    assert ids_in(logs_dir, f"t-tail/{AGENT}") == first + second
    assert [b["seq"] for b in chain(logs_dir, f"t-tail/{AGENT}")] == list(range(1, 9))
    assert set(id_counts(logs_dir).values()) == {1}
    assert pending(client) == 0


def test_file_holding_only_a_torn_first_line_starts_over(
    redis_url: str, client: redis.Redis, publisher: Publisher, logs_dir: Path
) -> None:
    (logs_dir / "t-first").mkdir(parents=True)
    (logs_dir / "t-first" / AGENT).write_bytes(b'{"seq":1,"id":"1-0","type":"task:output","ts":"2026')
    published = publish_outputs(publisher, "t-first", 3)
    with consumer_run(settings_for(redis_url, logs_dir)) as run:
        run.wait_drained()
    assert ids_in(logs_dir, f"t-first/{AGENT}") == published
    assert pending(client) == 0


def test_garbage_last_line_is_quarantined_and_the_chain_continues(
    redis_url: str, client: redis.Redis, publisher: Publisher, logs_dir: Path
) -> None:
    first = publish_outputs(publisher, "t-garbage", 3)
    with consumer_run(settings_for(redis_url, logs_dir)) as run:
        run.wait_drained()
    path = logs_dir / "t-garbage" / AGENT
    whole = path.read_bytes()
    garbage = [b"this is not a record\n", b'{"seq":4,"id":"1-0","type":"x","hash":"nothex"}\n']
    with path.open("ab") as f:
        f.write(b"".join(garbage))

    second = publish_outputs(publisher, "t-garbage", 3, start=3)
    with consumer_run(settings_for(redis_url, logs_dir)) as run:
        run.wait_drained()

    assert path.read_bytes().startswith(whole)
    assert ids_in(logs_dir, f"t-garbage/{AGENT}") == first + second
    quarantine = logs_dir / STATE_DIR_NAME / "quarantine"
    kept = sorted(p.read_bytes() for p in quarantine.iterdir())
    assert kept == sorted(garbage), "each damaged line is kept aside, byte for byte"
    assert set(id_counts(logs_dir).values()) == {1}
    assert pending(client) == 0


# -- pending entries: our own, and a dead consumer's ----------------------------------------------------------------


def test_own_pending_entries_are_processed_at_start_up_first(
    redis_url: str, client: redis.Redis, publisher: Publisher, logs_dir: Path
) -> None:
    published = publish_outputs(publisher, "t-own", 12)
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    delivered = read_as(client, "c-own", 7)  # delivered to our name, the process died before writing them
    assert delivered == published[:7] and pending(client, "c-own") == 7
    later = publish_outputs(publisher, "t-own", 3, start=12)

    # claim_idle_ms stays at its default (60 s): only the start-up resume can pick these up this quickly.
    with consumer_run(settings_for(redis_url, logs_dir, consumer_name="c-own", max_batch_size=3)) as run:
        run.wait_drained(timeout=10)
        assert run.consumer.stats.events_written == 15

    assert ids_in(logs_dir, f"t-own/{AGENT}") == published + later  # the resumed ones first: stream order
    assert pending(client) == 0


def test_entries_of_a_dead_consumer_are_claimed_and_written_once(
    redis_url: str, client: redis.Redis, publisher: Publisher, logs_dir: Path
) -> None:
    settings = settings_for(redis_url, logs_dir, consumer_name="c-live", claim_idle_ms=100, claim_interval_s=0.1)
    published = publish_outputs(publisher, "t-claim", 10)
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    # The dead consumer got six entries, made the first three durable, and died before acknowledging any.
    held = entries_of(client.xreadgroup(GROUP, "c-dead", {STREAM: ">"}, count=6))
    commit_without_ack(settings, held[:3])
    wait_until(
        lambda: all(row["time_since_delivered"] >= 150 for row in client.xpending_range(STREAM, GROUP, "-", "+", 10)),
        timeout=5,
        what="the dead consumer's entries to go idle",
    )
    with consumer_run(settings) as run:
        run.wait_drained(timeout=10)
        assert run.consumer.stats.duplicates_skipped == 3
        assert run.consumer.stats.events_written == 7

    assert ids_in(logs_dir, f"t-claim/{AGENT}") == published
    assert pending(client) == 0 and pending(client, "c-dead") == 0


def test_entries_stuck_on_another_consumer_while_running_are_claimed(
    redis_url: str, client: redis.Redis, publisher: Publisher, logs_dir: Path
) -> None:
    settings = settings_for(redis_url, logs_dir, claim_idle_ms=100, claim_interval_s=0.1)
    with consumer_run(settings) as run:
        first = publish_outputs(publisher, "t-steal", 3)
        run.wait_drained()
        # Atomically: two entries added and delivered to another consumer that will never acknowledge them.
        pipe = client.pipeline(transaction=True)
        for n in range(2):
            pipe.xadd(STREAM, {"type": "task:output", "task_id": "t-steal", "data": json.dumps({"n": n})})
        pipe.xreadgroup(GROUP, "c-gone", {STREAM: ">"}, count=10)
        *added, reply = pipe.execute()
        stuck = [eid.decode() for eid in added]
        assert [eid.decode() for eid, _ in entries_of(reply)] == stuck
        later = publish_outputs(publisher, "t-steal", 3, start=3)
        run.wait_drained(timeout=10)

    on_disk = ids_in(logs_dir, f"t-steal/{AGENT}")
    assert sorted(on_disk) == sorted(first + stuck + later), "each event once (claimed ones may come late)"
    assert pending(client) == 0


def test_replay_after_a_late_claim_and_a_restart_writes_nothing_twice(
    redis_url: str, client: redis.Redis, publisher: Publisher, logs_dir: Path
) -> None:
    """Entries claimed late land after newer ones (older ids at the end of the file). A restart, then a replay of
    the group (a failover to a lagging replica, a recreated group): still nothing written twice."""
    settings = settings_for(redis_url, logs_dir, consumer_name="c-late", claim_idle_ms=1000, claim_interval_s=0.1)
    with consumer_run(settings) as run:
        first = publish_outputs(publisher, "t-late", 2)
        run.wait_drained()
        pipe = client.pipeline(transaction=True)
        for n in range(2):
            pipe.xadd(STREAM, {"type": "task:output", "task_id": "t-late", "data": json.dumps({"n": n})})
        pipe.xreadgroup(GROUP, "c-gone", {STREAM: ">"}, count=10)
        *added, _reply = pipe.execute()
        stuck = [eid.decode() for eid in added]
        later = publish_outputs(publisher, "t-late", 2, start=2)
        wait_until(lambda: run.consumer.stats.events_written == 4, timeout=5, what="the newer entries")
        run.wait_drained(timeout=10)  # ... and the stuck ones, claimed after a second
    assert ids_in(logs_dir, f"t-late/{AGENT}") == first + later + stuck  # the setting: older ids at the end
    before = (logs_dir / "t-late" / AGENT).read_bytes()

    client.xgroup_setid(STREAM, GROUP, "0")
    with consumer_run(settings) as run:
        run.wait_drained()
        written = run.consumer.stats.events_written

    assert ids_in(logs_dir, f"t-late/{AGENT}") == first + later + stuck
    assert (logs_dir / "t-late" / AGENT).read_bytes() == before
    assert written == 0
    assert pending(client) == 0


# -- the delivery count --------------------------------------------------------------------------------------------


def test_entry_delivered_too_often_is_dead_lettered(
    redis_url: str, client: redis.Redis, publisher: Publisher, logs_dir: Path
) -> None:
    over, limit, fresh = publish_outputs(publisher, "t-count", 3)
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    read_as(client, "c-count", 1)  # over: 1
    read_as(client, "c-count", 1, start="0")  # over: 2
    read_as(client, "c-count", 1, start="0")  # over: 3
    read_as(client, "c-count", 1)  # limit: 1
    read_as(client, "c-count", 2, start="0")  # over: 4, limit: 2
    assert (delivery_count(client, over), delivery_count(client, limit)) == (4, 2)

    # The start-up resume delivers both once more: over 5 (> 3), limit 3 (== 3, still written).
    with consumer_run(settings_for(redis_url, logs_dir, consumer_name="c-count", max_deliveries=3)) as run:
        run.wait_drained(timeout=10)
        assert run.consumer.stats.dead_letters_by_reason == {"too_many_deliveries": 1}

    letters = dead_letters(logs_dir)
    assert list(letters) == [over]
    assert letters[over]["reason"] == "too_many_deliveries" and letters[over]["deliveries"] == 5
    assert letters[over]["fields"]["task_id"] == "t-count"  # the entry itself is kept with its dead letter
    assert ids_in(logs_dir, f"t-count/{AGENT}") == [limit, fresh]
    assert set(id_counts(logs_dir).values()) == {1}
    assert pending(client) == 0


def test_entry_already_written_is_not_dead_lettered_for_its_deliveries(
    redis_url: str, client: redis.Redis, publisher: Publisher, logs_dir: Path
) -> None:
    """Crash-looping between commit and XACK redelivers an entry that is already on disk: it was written, so it
    is a duplicate to acknowledge, not an entry 'delivered too often without being written' (docs/records.md)."""
    settings = settings_for(redis_url, logs_dir, consumer_name="c-loop", max_deliveries=3)
    (written,) = publish_outputs(publisher, "t-loop", 1)
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    commit_without_ack(settings, entries_of(client.xreadgroup(GROUP, "c-loop", {STREAM: ">"}, count=1)))
    for _ in range(3):  # three more restarts, each dying again before its XACK
        read_as(client, "c-loop", 10, start="0")
    assert delivery_count(client, written) == 4

    with consumer_run(settings) as run:
        run.wait_drained(timeout=10)

    assert ids_in(logs_dir, f"t-loop/{AGENT}") == [written]
    counts = id_counts(logs_dir)
    assert counts[written] == 1, f"{written} is on disk {counts[written]} times: {dead_letters(logs_dir)}"
    assert pending(client) == 0


def test_dead_lettered_entry_is_not_written_again_when_replayed(
    redis_url: str, client: redis.Redis, publisher: Publisher, logs_dir: Path
) -> None:
    """An entry given up on (too many deliveries) and then replayed by the group ends in one place, not two."""
    (over,) = publish_outputs(publisher, "t-given-up", 1)
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    for start in (">", "0", "0"):
        read_as(client, "c-given-up", 1, start=start)
    settings = settings_for(redis_url, logs_dir, consumer_name="c-given-up", max_deliveries=2)
    with consumer_run(settings) as run:
        run.wait_drained(timeout=10)
        assert dead_letters(logs_dir)[over]["reason"] == "too_many_deliveries"
        client.xgroup_setid(STREAM, GROUP, "0")  # a replay: the entry comes again with a fresh count
        wait_until(lambda: run.consumer.stats.batches >= 2, timeout=10, what="the replay")
        run.wait_drained(timeout=10)

    counts = id_counts(logs_dir)
    assert counts[over] == 1, f"{over} is in {counts[over]} records: {sorted(records_on_disk(logs_dir))}"
    assert pending(client) == 0


# -- entries trimmed from the stream while pending ------------------------------------------------------------------


def test_pending_entries_trimmed_from_the_stream_are_dead_lettered_as_deleted(
    redis_url: str, client: redis.Redis, publisher: Publisher, logs_dir: Path
) -> None:
    mine, theirs, kept = publish_outputs(publisher, "t-trim", 3)
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    assert read_as(client, "c-trim", 1) == [mine]
    assert read_as(client, "c-dead", 1) == [theirs]
    client.xdel(STREAM, mine, theirs)  # trimmed (XDEL, MAXLEN) while still pending
    time.sleep(0.2)
    settings = settings_for(redis_url, logs_dir, consumer_name="c-trim", claim_idle_ms=100, claim_interval_s=0.1)
    with consumer_run(settings) as run:
        run.wait_drained(timeout=10)

    reasons = {eid: body["reason"] for eid, body in dead_letters(logs_dir).items()}
    assert reasons == {mine: "deleted_from_stream", theirs: "deleted_from_stream"}
    assert ids_in(logs_dir, f"t-trim/{AGENT}") == [kept]
    assert pending(client) == 0


# -- the group disappears -------------------------------------------------------------------------------------------


def test_group_destroyed_while_running_is_recreated(
    redis_url: str, client: redis.Redis, publisher: Publisher, logs_dir: Path
) -> None:
    with consumer_run(settings_for(redis_url, logs_dir)) as run:
        first = publish_outputs(publisher, "t-nogroup", 5)
        run.wait_drained()
        assert client.xgroup_destroy(STREAM, GROUP) == 1
        time.sleep(0.2)  # the consumer's next XREADGROUP meets NOGROUP
        second = publish_outputs(publisher, "t-nogroup", 5, start=5)
        wait_until(lambda: len(ids_in(logs_dir, f"t-nogroup/{AGENT}")) >= 10, timeout=15, what="the new events")
        run.wait_drained(timeout=10)
        assert run.consumer.stats.errors.get("redis_nogroup", 0) >= 1
        assert run.consumer.stats.state == "running"

    assert [g["name"] for g in client.xinfo_groups(STREAM)] == [GROUP.encode()]
    assert ids_in(logs_dir, f"t-nogroup/{AGENT}") == first + second
    assert set(id_counts(logs_dir).values()) == {1}
    assert pending(client) == 0

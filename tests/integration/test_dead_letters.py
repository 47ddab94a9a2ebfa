"""Bad entries never stop the consumer and are never dropped: each one lands in the dead-letter store exactly once,
with its reason and its original fields, and nothing of it reaches the disk outside the logs directory."""

from __future__ import annotations

import base64
import os
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import redis

from tests.support import Publisher, consumer_run, settings_for

MAX_ENTRY_BYTES = 2048
GOOD_TASK = "good-task"
UNKNOWN_TASK = "future-task"

# (name, raw fields, expected reason). Field values are given as the producer would XADD them.
BAD_ENTRIES: list[tuple[str, dict[str | bytes, str | bytes], str]] = [
    ("missing type", {"timestamp": "2026-01-31T12:00:00Z", "task_id": GOOD_TASK, "data": "{}"}, "missing_type"),
    ("data not JSON", {"type": "task:output", "task_id": GOOD_TASK, "data": "{not json"}, "invalid_data"),
    ("data a JSON list", {"type": "task:output", "task_id": GOOD_TASK, "data": "[1, 2, 3]"}, "data_not_object"),
    ("task id ..", {"type": "task:output", "task_id": "..", "data": "{}"}, "unsafe_task_id"),
    ("task id a/b", {"type": "task:output", "task_id": "a/b", "data": "{}"}, "unsafe_task_id"),
    ("task id .hidden", {"type": "task:created", "task_id": ".hidden", "data": "{}"}, "unsafe_task_id"),
    ("task id 200 x", {"type": "task:output", "task_id": "x" * 200, "data": "{}"}, "unsafe_task_id"),
    ("task id with NUL", {"type": "task:output", "task_id": "a\x00b", "data": "{}"}, "unsafe_task_id"),
    ("task id .. in data", {"type": "task:output", "data": '{"task_id": "../escape"}'}, "unsafe_task_id"),
    (
        "webhook id ../w",
        {"type": "webhook:received", "webhook_event_id": "../w", "data": '{"source": "github"}'},
        "unsafe_webhook_event_id",
    ),
    (
        "webhook id .w",
        {"type": "webhook:received", "webhook_event_id": ".w", "data": "{}"},
        "unsafe_webhook_event_id",
    ),
    ("no id at all", {"type": "task:output", "data": '{"content": "orphan"}'}, "no_task_or_webhook_id"),
    (
        "too large",
        {"type": "task:output", "task_id": GOOD_TASK, "data": orjson.dumps({"content": "z" * 3000}).decode()},
        "entry_too_large",
    ),
    (
        "non-UTF-8 field value",
        {"type": "task:output", "task_id": GOOD_TASK, "note": b"\xff\xfe\x80raw", "data": "{}"},
        "not_utf8",
    ),
    ("non-UTF-8 data", {"type": "task:output", "task_id": GOOD_TASK, "data": b'{"content": "\xc3\x28"}'}, "not_utf8"),
]


def _records(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def _tree(root: Path) -> set[str]:
    """Every path under ``root`` (relative, ``/``-separated), symlinks listed but not followed."""
    out: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            out.add((Path(dirpath) / name).relative_to(root).as_posix())
    return out


def _expected_field(value: str | bytes) -> Any:
    if isinstance(value, str):
        return value
    try:
        return value.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode()}


def _publish_workload(publisher: Publisher) -> tuple[list[str], dict[str, tuple[str, dict[str | bytes, str | bytes]]]]:
    """Good events interleaved with every bad entry; returns (good ids, bad id -> (reason, fields))."""
    good: list[str] = []
    bad: dict[str, tuple[str, dict[str | bytes, str | bytes]]] = {}
    good.append(publisher.event("task:created", task_id=GOOD_TASK, data={"source": "github", "agent_type": "coder"}))
    for n, (_, fields, reason) in enumerate(BAD_ENTRIES):
        bad[publisher.raw(fields)] = (reason, fields)
        good.append(publisher.event("task:output", task_id=GOOD_TASK, data={"content": f"step {n}"}))
    good.append(publisher.event("task:completed", task_id=GOOD_TASK, data={"status": "completed", "exit_code": "0"}))
    return good, bad


def _assert_no_pending(client: redis.Redis) -> None:
    assert client.xpending("task_events", "task-logger")["pending"] == 0
    group = client.xinfo_groups("task_events")[0]
    assert group["lag"] == 0


def test_every_bad_entry_is_dead_lettered_once_and_the_consumer_moves_on(
    redis_url: str, publisher: Publisher, client: redis.Redis, tmp_path: Path
) -> None:
    logs_dir = tmp_path / "logs"
    good, bad = _publish_workload(publisher)
    assert len(bad) == len(BAD_ENTRIES)

    settings = settings_for(redis_url, logs_dir, max_entry_bytes=MAX_ENTRY_BYTES)
    with consumer_run(settings) as run:
        run.wait_drained()
        stats = run.consumer.stats
        assert stats.dead_letters == len(bad)
        assert stats.events_written == len(good)
        assert stats.dead_letters_by_reason == dict(Counter(reason for reason, _ in bad.values()))
        assert stats.fault is None
    _assert_no_pending(client)

    # The good events around the bad ones are all written, in stream order.
    output = _records(logs_dir / GOOD_TASK / "03-agent-output.jsonl")
    assert [r["id"] for r in output] == good
    assert [r["data"].get("content") for r in output[1:-1]] == [f"step {n}" for n in range(len(BAD_ENTRIES))]
    assert (logs_dir / GOOD_TASK / "metadata.json").is_file()
    assert (logs_dir / GOOD_TASK / "04-final-result.json").is_file()

    # Each bad entry exactly once, with its reason and its original fields.
    letters = _records(logs_dir / ".tasklogger" / "dead-letters.jsonl")
    assert Counter(r["id"] for r in letters) == Counter(list(bad))
    assert [r["id"] for r in letters] == list(bad)  # stream order
    for record in letters:
        reason, fields = bad[record["id"]]
        assert record["reason"] == reason, record
        assert record["detail"]
        expected = {(k.decode() if isinstance(k, bytes) else k): _expected_field(v) for k, v in fields.items()}
        assert record["fields"] == expected, record
    # Non-UTF-8 bytes come back exactly from their base64.
    raw_note = next(r for r in letters if "note" in r["fields"])["fields"]["note"]
    assert base64.b64decode(raw_note["base64"]) == b"\xff\xfe\x80raw"
    raw_data = next(r for r in letters if isinstance(r["fields"].get("data"), dict))["fields"]["data"]
    assert base64.b64decode(raw_data["base64"]) == b'{"content": "\xc3\x28"}'

    # Nothing was created outside the logs directory, nor any unexpected directory inside it.
    assert sorted(os.listdir(tmp_path)) == ["logs"]
    tree = _tree(logs_dir)
    assert {p for p in tree if "/" not in p} == {".tasklogger", GOOD_TASK}, sorted(tree)
    assert {p for p in tree if p.startswith(f"{GOOD_TASK}/")} == {
        f"{GOOD_TASK}/{name}"
        for name in (
            "metadata.json",
            "01-input.json",
            "03-agent-output.jsonl",
            "04-final-result.json",
            "05-digests.jsonl",  # the task ended: sealed
        )
    }
    state = {p for p in tree if p.startswith(".tasklogger/")}
    assert state <= {".tasklogger/dead-letters.jsonl", ".tasklogger/consumer-name", ".tasklogger/lock"}, sorted(state)
    assert not any(os.path.islink(logs_dir / p) for p in tree)


def test_redelivered_bad_entries_are_not_dead_lettered_again(
    redis_url: str, publisher: Publisher, client: redis.Redis, logs_dir: Path
) -> None:
    good, bad = _publish_workload(publisher)
    settings = settings_for(redis_url, logs_dir, max_entry_bytes=MAX_ENTRY_BYTES)
    with consumer_run(settings) as run:
        run.wait_drained()
    letters_before = (logs_dir / ".tasklogger" / "dead-letters.jsonl").read_bytes()
    output_before = (logs_dir / GOOD_TASK / "03-agent-output.jsonl").read_bytes()

    # Redis delivers at least once: rewind the group so that every entry is delivered again, to a fresh process
    # state (a new Store with cold caches).
    client.xgroup_setid("task_events", "task-logger", "0")
    with consumer_run(settings) as run:
        run.wait_drained()
        assert run.consumer.stats.dead_letters == 0
        assert run.consumer.stats.events_written == 0
        assert run.consumer.stats.duplicates_skipped == len(good) + len(bad)
    _assert_no_pending(client)

    assert (logs_dir / ".tasklogger" / "dead-letters.jsonl").read_bytes() == letters_before
    assert (logs_dir / GOOD_TASK / "03-agent-output.jsonl").read_bytes() == output_before


def test_unknown_well_formed_types_are_kept_not_dead_lettered(
    redis_url: str, publisher: Publisher, client: redis.Redis, logs_dir: Path
) -> None:
    ids = [
        publisher.event("task:created", task_id=UNKNOWN_TASK, data={"source": "jira"}),
        publisher.event("task:brand_new_step", task_id=UNKNOWN_TASK, data={"anything": [1, {"nested": True}]}),
        publisher.event("frobnicator:spun", task_id=UNKNOWN_TASK, data={"rpm": "9000"}, extra_field="kept"),
        publisher.event("task:output", task_id=UNKNOWN_TASK, data={"content": "after the unknown ones"}),
    ]
    with consumer_run(settings_for(redis_url, logs_dir)) as run:
        run.wait_drained()
        assert run.consumer.stats.dead_letters == 0
    _assert_no_pending(client)

    output = _records(logs_dir / UNKNOWN_TASK / "03-agent-output.jsonl")
    assert [r["id"] for r in output] == ids
    assert [r["type"] for r in output] == ["task:created", "task:brand_new_step", "frobnicator:spun", "task:output"]
    assert output[1]["data"] == {"anything": [1, {"nested": True}]}
    assert output[2]["data"] == {"rpm": "9000"} and output[2]["fields"] == {"extra_field": "kept"}
    assert not (logs_dir / ".tasklogger" / "dead-letters.jsonl").exists()

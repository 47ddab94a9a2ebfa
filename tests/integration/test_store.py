"""The store on a real disk, driven directly (no Redis): group commit, atomic JSON views, heads recovered by a new
instance, exactly once across instances and out of order, and no write ever through a symlink."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from tasklogger.config import STATE_DIR_NAME
from tasklogger.errors import BadEntry, DiskError
from tasklogger.projector import project
from tasklogger.store import Store
from tasklogger.wire import Event, decode
from tests.faults import chain
from tests.support import Publisher, consumer_run, settings_for

AGENT = "03-agent-output.jsonl"
FLOW = "02-webhook-flow.jsonl"
USER = "03-user-inputs.jsonl"


def event(entry_id: str, event_type: str, *, task_id: str | None = None, webhook: str | None = None,
          **data: Any) -> Event:  # fmt: skip
    fields = {b"type": event_type.encode(), b"timestamp": b"2026-01-31T12:00:00Z", b"data": json.dumps(data).encode()}
    if task_id is not None:
        fields[b"task_id"] = task_id.encode()
    if webhook is not None:
        fields[b"webhook_event_id"] = webhook.encode()
    return decode(entry_id, fields, max_entry_bytes=4 * 1024 * 1024)


def apply_all(store: Store, events: list[Event]) -> list[bool]:
    """One batch: apply every event, commit; returns apply's verdict per event (False: already stored)."""
    batch = store.begin()
    try:
        applied = [batch.apply(e, project(e, batch.view(e))) for e in events]
    except BaseException:
        batch.abort()
        raise
    batch.commit()
    return applied


def ids(logs_dir: Path, rel: str) -> list[str]:
    return [str(b["id"]) for b in chain(logs_dir, rel)]


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def store(logs_dir: Path) -> Iterator[Store]:
    s = Store(logs_dir, fsync_threads=4)
    s.open()
    yield s
    s.close()


def reopen(store: Store) -> Store:
    """A new Store instance on the same directory, as after a restart (the old one closed)."""
    store.close()
    fresh = Store(store.root, fsync_threads=4)
    fresh.open()
    return fresh


# -- group commit -------------------------------------------------------------------------------------------------


def test_group_commit_writes_every_file_of_the_batch_at_commit(store: Store, logs_dir: Path) -> None:
    events = [
        event("100-0", "webhook:received", webhook="w-a", source="github"),
        event("100-1", "webhook:task_created", webhook="w-a", task_id="t-a"),
        event("101-0", "task:created", task_id="t-a", source="github", assigned_agent="brain", user_id="u1"),
        event("102-0", "task:created", task_id="t-b", source="jira", agent_type="planner"),
        event("103-0", "task:context_built", task_id="t-a", enriched_prompt="ctx"),
        event("104-0", "task:user_input", task_id="t-b", content="yes"),
        event("105-0", "task:output", task_id="t-a", content="done"),
        event("106-0", "task:completed", task_id="t-a", cost_usd="0.5", exit_code="0"),
        event("107-0", "task:failed", task_id="t-b", error="boom"),
    ]
    batch = store.begin()
    for e in events:
        assert batch.apply(e, project(e, batch.view(e)))
    # Nothing reaches the disk before the commit.
    assert not (logs_dir / "t-a").exists() and not (logs_dir / "t-b").exists()
    result = batch.commit()

    assert result.written == len(events) and result.duplicates == 0
    assert result.tasks == {"t-a", "t-b"} and result.finished_tasks == {"t-a", "t-b"}
    assert ids(logs_dir, f"t-a/{FLOW}") == ["100-0", "100-1"]
    assert ids(logs_dir, f"t-a/{AGENT}") == ["101-0", "103-0", "105-0", "106-0"]
    assert ids(logs_dir, f"t-b/{AGENT}") == ["102-0", "107-0"]
    assert ids(logs_dir, f"t-b/{USER}") == ["104-0"]
    assert sorted(p.name for p in (logs_dir / "t-a").iterdir()) == sorted(
        ["metadata.json", "01-input.json", FLOW, AGENT, "04-final-result.json", "05-digests.jsonl"]  # ended: sealed
    )
    for path in (logs_dir / "t-a").glob("*.json"):
        json.loads(path.read_bytes())  # every view is complete, valid JSON
    assert orjson.loads((logs_dir / "t-a" / "01-input.json").read_bytes())["enriched_prompt"] == "ctx"
    assert orjson.loads((logs_dir / "t-b" / "04-final-result.json").read_bytes())["status"] == "failed"
    assert orjson.loads((logs_dir / "t-b" / "metadata.json").read_bytes())["agent_type"] == "planner"
    assert not list(logs_dir.rglob(".*.tmp")), "no temp file is left behind"


def test_json_views_are_replaced_whole_and_leave_no_temp_files(store: Store, logs_dir: Path) -> None:
    apply_all(store, [event("1-0", "task:created", task_id="t-v", input_message="hi", source="slack")])
    for n in range(1, 6):
        apply_all(
            store,
            [
                event(f"{n + 1}-0", "task:context_built", task_id="t-v", enriched_prompt="x" * (n * 10_000)),
                event(f"{n + 1}-1", "task:completed", task_id="t-v", cost_usd=str(n), duration_seconds=n),
            ],
        )
        doc = json.loads((logs_dir / "t-v" / "01-input.json").read_bytes())
        assert doc["input_message"] == "hi" and doc["enriched_prompt"] == "x" * (n * 10_000)
        assert json.loads((logs_dir / "t-v" / "04-final-result.json").read_bytes())["cost_usd"] == float(n)
        assert not list(logs_dir.rglob(".*.tmp"))
    assert [e for e in os.listdir(logs_dir / "t-v") if e.startswith(".")] == []


# -- a second instance recovers what the first left ------------------------------------------------------------------


def test_second_store_recovers_heads_and_dedups_across_instances(store: Store, logs_dir: Path) -> None:
    apply_all(store, [event(f"10-{n}", "task:output", task_id="t-r", content=str(n)) for n in range(3)])
    apply_all(store, [event("11-0", "webhook:received", webhook="w-r", source="github")])  # buffered
    before = (logs_dir / "t-r" / AGENT).read_bytes()

    second = reopen(store)
    try:
        applied = apply_all(
            second,
            [
                event("10-1", "task:output", task_id="t-r", content="1"),  # redelivered: skipped
                event("10-2", "task:output", task_id="t-r", content="2"),  # redelivered: skipped
                event("12-0", "task:output", task_id="t-r", content="3"),  # new: seq 4, linked to seq 3
                event("11-0", "webhook:received", webhook="w-r", source="github"),  # redelivered into the buffer
                event("13-0", "webhook:task_created", webhook="w-r", task_id="t-r"),  # adopts the disk buffer
            ],
        )
        assert applied == [False, False, True, False, True]
    finally:
        second.close()

    data = (logs_dir / "t-r" / AGENT).read_bytes()
    assert data.startswith(before)
    assert [(b["seq"], b["id"]) for b in chain(logs_dir, f"t-r/{AGENT}")] == [
        (1, "10-0"), (2, "10-1"), (3, "10-2"), (4, "12-0"),
    ]  # fmt: skip
    assert ids(logs_dir, f"t-r/{FLOW}") == ["11-0", "13-0"]

    third = Store(logs_dir)
    third.open()
    try:
        # After the adoption the webhook step is recognised in the task's flow by a third instance too.
        assert apply_all(third, [event("11-0", "webhook:received", webhook="w-r", source="github")]) == [False]
        assert apply_all(third, [event("13-0", "webhook:task_created", webhook="w-r", task_id="t-r")]) == [False]
    finally:
        third.close()
    assert ids(logs_dir, f"t-r/{FLOW}") == ["11-0", "13-0"]
    assert not list((logs_dir / STATE_DIR_NAME / "webhooks").rglob("*.jsonl"))


def test_out_of_order_older_id_is_appended_but_a_present_one_is_skipped(store: Store, logs_dir: Path) -> None:
    apply_all(store, [event(i, "task:output", task_id="t-o", content=i) for i in ("100-0", "300-0")])
    # Same instance, same batch and the next one: 200-0 never written (a claim from a dead consumer), 100-0 is.
    assert apply_all(
        store,
        [
            event("200-0", "task:output", task_id="t-o", content="200-0"),
            event("100-0", "task:output", task_id="t-o", content="100-0"),
            event("200-0", "task:output", task_id="t-o", content="200-0"),  # twice in one batch: once
        ],
    ) == [True, False, False]
    assert apply_all(store, [event("200-0", "task:output", task_id="t-o", content="200-0")]) == [False]

    second = reopen(store)
    try:
        # A fresh instance knows only the head (300-0): older ids are checked against the file's content.
        assert apply_all(
            second,
            [
                event("150-0", "task:output", task_id="t-o", content="150-0"),
                event("200-0", "task:output", task_id="t-o", content="200-0"),
                event("300-0", "task:output", task_id="t-o", content="300-0"),
                event("400-0", "task:output", task_id="t-o", content="400-0"),
                event("150-0", "task:output", task_id="t-o", content="150-0"),
            ],
        ) == [True, False, False, True, False]
    finally:
        second.close()
    assert ids(logs_dir, f"t-o/{AGENT}") == ["100-0", "300-0", "200-0", "150-0", "400-0"]


# -- symlinks: never written through --------------------------------------------------------------------------------


def test_symlinked_task_directory_is_never_written_through(store: Store, logs_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (logs_dir / "t-link").symlink_to(outside, target_is_directory=True)
    before = tree(outside)

    for e in (
        event("1-0", "task:created", task_id="t-link", source="github"),  # reads 01-input.json first
        event("1-1", "task:output", task_id="t-link", content="x"),
        event("1-2", "task:completed", task_id="t-link", exit_code="0"),
        event("1-3", "task:user_input", task_id="t-link", content="y"),
    ):
        batch = store.begin()
        with pytest.raises(BadEntry) as caught:
            batch.apply(e, project(e, batch.view(e)))
        assert caught.value.reason == "task_directory_unsafe"
        batch.abort()

    # The store goes on for other tasks; the link's target never changes.
    apply_all(store, [event("2-0", "task:output", task_id="t-fine", content="ok")])
    assert ids(logs_dir, f"t-fine/{AGENT}") == ["2-0"]
    assert tree(outside) == before
    assert (logs_dir / "t-link").is_symlink()


def test_task_directory_swapped_for_a_symlink_after_caching(store: Store, logs_dir: Path, tmp_path: Path) -> None:
    """The store knows t-swap (its head is cached) when someone replaces the directory with a symlink. A batch
    touching t-swap and t-ok fails; nothing goes through the link, and the failed batch leaves nothing behind:
    retried entry by entry (as the consumer does), t-ok's event is applied and durable at that retry's commit,
    before the consumer may acknowledge it."""
    apply_all(
        store,
        [
            event("1-0", "task:output", task_id="t-ok", content="a"),
            event("1-1", "task:output", task_id="t-swap", content="b"),
        ],
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (logs_dir / "t-swap").rename(tmp_path / "t-swap-moved")
    (logs_dir / "t-swap").symlink_to(outside, target_is_directory=True)

    ok, swapped = (
        event("2-0", "task:output", task_id="t-ok", content="c"),
        event("2-1", "task:output", task_id="t-swap"),
    )
    with pytest.raises(BadEntry) as caught:
        apply_all(store, [ok, swapped])
    assert caught.value.reason == "task_directory_unsafe"
    assert ids(logs_dir, f"t-ok/{AGENT}") == ["1-0"]

    assert apply_all(store, [ok]) == [True], "2-0 was never written: it must not count as already stored"
    assert ids(logs_dir, f"t-ok/{AGENT}") == ["1-0", "2-0"]
    with pytest.raises(BadEntry):
        apply_all(store, [swapped])
    apply_all(store, [event("3-0", "task:output", task_id="t-ok", content="e")])
    assert ids(logs_dir, f"t-ok/{AGENT}") == ["1-0", "2-0", "3-0"]
    assert list(outside.iterdir()) == []


def test_task_directory_swapped_for_a_symlink_while_consuming(
    redis_url: str, client: redis.Redis, publisher: Publisher, logs_dir: Path, tmp_path: Path
) -> None:
    """The same through the consumer: an entry that shared a batch with the swapped task is acknowledged only
    once it is on disk; the swapped task's entry is dead-lettered; the link's target stays untouched."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with consumer_run(settings_for(redis_url, logs_dir, max_deliveries=3)) as run:
        publisher.event("task:output", task_id="t-ok", data={"content": "a"})
        publisher.event("task:output", task_id="t-swap", data={"content": "b"})
        run.wait_drained()
        (logs_dir / "t-swap").rename(tmp_path / "t-swap-moved")
        (logs_dir / "t-swap").symlink_to(outside, target_is_directory=True)
        pipe = client.pipeline(transaction=True)  # both in one XREADGROUP batch
        pipe.xadd("task_events", {"type": "task:output", "task_id": "t-ok", "data": '{"content": "c"}'})
        pipe.xadd("task_events", {"type": "task:output", "task_id": "t-swap", "data": '{"content": "d"}'})
        ok, swapped = (eid.decode() for eid in pipe.execute())
        run.wait_drained(timeout=15)
        assert ok in ids(logs_dir, f"t-ok/{AGENT}"), f"{ok} was acknowledged but is not on disk"

    letters = {str(b["id"]): str(b["reason"]) for b in chain(logs_dir, f"{STATE_DIR_NAME}/dead-letters.jsonl")}
    assert letters == {swapped: "task_directory_unsafe"}
    assert ids(logs_dir, f"t-ok/{AGENT}") == [publisher.ids[0], ok]
    assert list(outside.iterdir()) == []
    assert int(client.xpending("task_events", "task-logger")["pending"]) == 0


def test_symlinked_task_directory_is_dead_lettered_by_the_consumer(
    redis_url: str, client: redis.Redis, publisher: Publisher, logs_dir: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    logs_dir.mkdir()
    (logs_dir / "t-evil").symlink_to(outside, target_is_directory=True)
    bad = [
        publisher.event("task:created", task_id="t-evil", data={"source": "github"}),
        publisher.event("task:output", task_id="t-evil", data={"content": "x"}),
        publisher.event("task:completed", task_id="t-evil", data={"exit_code": "0"}),
    ]
    good = [publisher.event("task:output", task_id="t-good", data={"content": str(n)}) for n in range(3)]

    with consumer_run(settings_for(redis_url, logs_dir)) as run:
        run.wait_drained(timeout=10)
        assert run.consumer.stats.dead_letters_by_reason == {"task_directory_unsafe": 3}

    letters = {str(b["id"]): b for b in chain(logs_dir, f"{STATE_DIR_NAME}/dead-letters.jsonl")}
    assert sorted(letters) == sorted(bad)
    assert {b["reason"] for b in letters.values()} == {"task_directory_unsafe"}
    assert ids(logs_dir, f"t-good/{AGENT}") == good
    assert list(outside.iterdir()) == []
    assert int(client.xpending("task_events", "task-logger")["pending"]) == 0


# -- pipelined commits: the next batch is built while the previous one is written ------------------------------------


def build(store: Store, events: list[Event]) -> Any:
    batch = store.begin()
    for e in events:
        batch.apply(e, project(e, batch.view(e)))
    return batch


def test_batch_built_on_a_committing_batch_continues_its_chains(store: Store, logs_dir: Path) -> None:
    first = build(
        store,
        [
            event("1-0", "task:created", task_id="t1", source="github"),
            event("2-0", "task:output", task_id="t1", text="a"),
        ],
    )
    first.seal()
    # Built before the first batch is on disk: its records chain on the first batch's heads.
    second = build(
        store,
        [event("3-0", "task:output", task_id="t1", text="b"), event("4-0", "task:output", task_id="t2", text="c")],
    )
    assert not (logs_dir / "t1" / AGENT).exists()
    first.write()
    first.finish(ok=True)
    assert ids(logs_dir, f"t1/{AGENT}") == ["1-0", "2-0"]
    second.commit()
    assert ids(logs_dir, f"t1/{AGENT}") == ["1-0", "2-0", "3-0"]
    assert ids(logs_dir, f"t2/{AGENT}") == ["4-0"]
    assert ids(reopen(store).root, f"t1/{AGENT}") == ["1-0", "2-0", "3-0"]


def test_next_batch_aborted_while_the_previous_commits_keeps_the_committed_heads(store: Store, logs_dir: Path) -> None:
    first = build(
        store,
        [
            event("1-0", "task:created", task_id="t1", source="github"),
            event("2-0", "task:output", task_id="t1", text="a"),
        ],
    )
    first.seal()
    second = build(store, [event("3-0", "task:output", task_id="t1", text="b")])
    second.abort()  # e.g. reading a file failed while building ahead
    first.write()
    first.finish(ok=True)
    # The aborted batch's entries come again (they were never acknowledged): they chain on the committed head.
    apply_all(
        store,
        [event("3-0", "task:output", task_id="t1", text="b"), event("5-0", "task:output", task_id="t1", text="d")],
    )
    assert ids(logs_dir, f"t1/{AGENT}") == ["1-0", "2-0", "3-0", "5-0"]
    assert [r["seq"] for r in chain(logs_dir, f"t1/{AGENT}")] == [1, 2, 3, 4]


def test_buffered_webhook_steps_of_a_committing_batch_are_adopted_by_the_next(store: Store, logs_dir: Path) -> None:
    first = build(store, [event("1-0", "webhook:received", webhook="w-1", source="github")])
    first.seal()
    second = build(
        store,
        [
            event("2-0", "webhook:task_created", webhook="w-1", task_id="t1"),
            event("3-0", "webhook:matched", webhook="w-1"),
        ],
    )
    first.write()
    first.finish(ok=True)
    second.commit()
    assert ids(logs_dir, f"t1/{FLOW}") == ["1-0", "2-0", "3-0"]
    assert not list((logs_dir / STATE_DIR_NAME / "webhooks").rglob("w-1.jsonl")), "the buffer was moved, not copied"


def test_failed_commit_under_a_batch_built_on_it_loses_and_repeats_nothing(tiny_disk: Path) -> None:
    logs_dir = tiny_disk / "logs"
    store = Store(logs_dir, fsync_threads=4)
    store.open()
    try:
        apply_all(store, [event("1-0", "task:created", task_id="t1", source="github")])
        filler = tiny_disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
        with contextlib.suppress(OSError):  # leave less room than the next batch needs
            while True:
                os.write(fd, b"\0" * 4096)
        os.close(fd)
        big = "x" * 200_000
        first = build(store, [event("2-0", "task:output", task_id="t1", text=big)])
        first.seal()
        second = build(store, [event("3-0", "task:output", task_id="t1", text="after")])
        with pytest.raises(DiskError) as failure:
            first.write()
        assert failure.value.kind == "disk_full"
        first.finish(ok=False)
        second.abort()  # built on heads that never reached the disk
        assert ids(logs_dir, f"t1/{AGENT}") == ["1-0"]

        filler.unlink()  # space again: both batches come again from the stream, in order
        apply_all(store, [event("2-0", "task:output", task_id="t1", text=big)])
        apply_all(store, [event("3-0", "task:output", task_id="t1", text="after")])
        assert ids(logs_dir, f"t1/{AGENT}") == ["1-0", "2-0", "3-0"]
        assert [r["seq"] for r in chain(logs_dir, f"t1/{AGENT}")] == [1, 2, 3]
    finally:
        store.close()


def test_input_enriched_while_its_creation_commits_keeps_every_field(store: Store, logs_dir: Path) -> None:
    # More tasks created in one batch than the store caches input documents for: the next batch, built before
    # this one is on disk, must still see each task's input (not an absent file).
    created = [
        event(f"{n + 1}-0", "task:created", task_id=f"t{n}", source="github", input_message=f"fix bug {n}")
        for n in range(300)
    ]
    first = build(store, created)
    first.seal()
    second = build(store, [event("1000-0", "task:context_built", task_id="t0", enriched_prompt="fix bug 0 in a.py")])
    first.write()
    first.finish(ok=True)
    second.commit()
    doc = json.loads((logs_dir / "t0" / "01-input.json").read_bytes())
    assert doc["input_message"] == "fix bug 0"
    assert doc["enriched_prompt"] == "fix bug 0 in a.py"

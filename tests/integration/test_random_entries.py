"""2,000 random stream entries (20 examples of 100; random field names, bytes, sizes, types, ids): the consumer
stays up, and every entry ends written exactly once or dead-lettered with a reason; none is left pending."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import redis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.faults import dead_letter_reasons, ids_on_disk, pending_count
from tests.support import consumer_run, settings_for

TYPES = st.sampled_from(
    ["task:created", "task:output", "task:completed", "webhook:received", "webhook:task_created", "task:user_input",
     "knowledge:query", "brand:new", "", "no-colon", "x" * 300, "bad\x00type"]
)  # fmt: skip
IDS = st.one_of(
    st.sampled_from(["t-1", "t-2", "w-1", "..", ".", "a/b", "", "null", ".hidden", "x" * 200, "é" * 40]),
    st.text(min_size=0, max_size=20),
)
SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=30)
)
JSON_VALUES = st.one_of(
    SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(st.text(max_size=6), SCALARS, max_size=3)
)
DATA = st.one_of(
    st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=4).map(json.dumps),
    JSON_VALUES.map(json.dumps),
    st.text(max_size=40),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
)


@st.composite
def entries(draw: st.DrawFn) -> dict[bytes, bytes]:
    fields: dict[bytes, bytes] = {}
    if draw(st.integers(0, 9)):
        fields[b"type"] = draw(TYPES).encode()
    for name in ("task_id", "webhook_event_id"):
        if draw(st.booleans()):
            fields[name.encode()] = draw(IDS).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 3)):
        fields[b"data"] = draw(DATA).encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        fields[b"timestamp"] = draw(st.sampled_from([b"2026-01-31T12:00:00Z", b"yesterday", b"", b"\xff\xfe"]))
    if draw(st.integers(0, 9)) == 0:  # now and then a field of raw bytes, its name or value maybe not UTF-8
        fields[draw(st.binary(min_size=1, max_size=8))] = draw(st.binary(max_size=64))
    if draw(st.integers(0, 99)) == 0:
        fields[b"data"] = json.dumps({"content": "y" * draw(st.integers(1500, 3000))}).encode()
    if not fields:
        fields[b"noise"] = b"1"
    return fields


# Generation only: each example runs a real consumer, so shrinking would take minutes; a failure still prints
# the generated entries.
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
    phases=[Phase.generate],
    report_multiple_bugs=False,
)
@given(batch=st.lists(entries(), min_size=100, max_size=100))
def test_random_entries_end_written_or_dead_lettered(redis_url: str, batch: list[dict[bytes, bytes]]) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    client.flushall()
    logs_dir = Path(tempfile.mkdtemp(prefix="tl-random-"))
    try:
        ids = [client.xadd("task_events", fields).decode() for fields in batch]  # type: ignore[arg-type]
        with consumer_run(settings_for(redis_url, logs_dir, max_entry_bytes=2048)) as run:
            run.wait_drained(timeout=60)
            assert run.consumer.stats.running
        counts = ids_on_disk(logs_dir)
        reasons = dead_letter_reasons(logs_dir)
        assert set(counts) == set(ids)
        assert set(counts.values()) == {1}
        assert all(reasons[i] for i in reasons)
        assert pending_count(client) == 0
        # Nothing outside the logs directory's own layout: task directories and the reserved directory only.
        for child in logs_dir.iterdir():
            assert child.is_dir() and not child.is_symlink()
    finally:
        shutil.rmtree(logs_dir, ignore_errors=True)
        client.close()

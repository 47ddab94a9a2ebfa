"""Pure parts of the web page and CLI client: the demo's entries follow the wire format, server-sent events
parse, the terminal timeline merges files in stream order and pairs tool calls with their results."""

from __future__ import annotations

from datetime import UTC, datetime

from tasklogger import demo
from tasklogger.client import parse_sse
from tasklogger.projector import AGENT_OUTPUT, USER_INPUTS, WEBHOOK_FLOW, target_file
from tasklogger.terminal import merged, paired_results
from tasklogger.web import load_assets
from tasklogger.web.pages import task_view
from tasklogger.wire import decode


def test_every_demo_entry_decodes_and_lands_where_the_wire_format_says() -> None:
    batch = demo.scripts(6, seed=3)
    files: dict[str, set[str]] = {s.task_id: set() for s in batch}
    types: set[str] = set()
    offsets = []

    for n, (offset, script, kind, data, webhook) in enumerate(demo.timeline(batch, speed=1.0)):
        fields = demo.fields_for(script, kind, data, webhook, datetime.now(UTC))
        event = decode(f"1-{n}", {k.encode(): v.encode() for k, v in fields.items()}, max_entry_bytes=1 << 22)
        assert event.timestamp_flag is None
        assert (event.task_id or event.data.get("task_id") or event.webhook_event_id) is not None
        if event.task_id is not None:
            files[event.task_id].add(target_file(event))
        types.add(kind)
        offsets.append(offset)

    assert offsets == sorted(offsets)  # merged in time order
    assert len({s.task_id for s in batch}) == 6
    assert {
        "task:created",
        "task:context_built",
        "task:thinking",
        "task:tool_call",
        "task:tool_result",
        "task:metrics",
        "task:user_input",
        "task:completed",
        "task:failed",
        "webhook:task_created",
    } <= types
    for task_id, touched in files.items():
        expected = {WEBHOOK_FLOW, AGENT_OUTPUT} | ({USER_INPUTS} if task_id.startswith("demo-github") else set())
        assert touched == expected, task_id


def test_server_sent_events_parse_with_comments_ids_and_multiline_data() -> None:
    lines = [": ping", "", "id: 1-0", "event: record", 'data: {"file": "agent_output",', 'data: "record": {}}', "",
             "event: end", "data: {}", ""]  # fmt: skip

    events = list(parse_sse(iter(lines)))

    assert [(e.event, e.id) for e in events] == [("record", "1-0"), ("end", None)]
    assert events[0].data == {"file": "agent_output", "record": {}}


def test_the_terminal_timeline_merges_by_stream_id_and_pairs_results() -> None:
    call = {"id": "10-0", "type": "task:tool_call", "data": {"name": "bash", "_tool_use_id": "u1"}}
    other = {"id": "10-1", "type": "task:tool_call", "data": {"name": "bash"}}
    late = {"id": "12-0", "type": "task:tool_result", "data": {"name": "bash"}}
    first = {"id": "11-0", "type": "task:tool_result", "data": {"name": "bash", "_tool_use_id": "u1"}}
    logs = {"agent_output": [call, other, first, late], "webhook_flow": [{"id": "9-5", "type": "webhook:received"}],
            "user_inputs": [{"id": "10-2", "type": "task:user_input"}]}  # fmt: skip

    records = merged(logs)
    pairing = paired_results(records)

    assert [r["id"] for _, r in records] == ["9-5", "10-0", "10-1", "10-2", "11-0", "12-0"]
    assert pairing.by_call[id(call)] is first and pairing.by_call[id(other)] is late
    assert pairing.consumed == {id(first), id(late)}


def test_task_data_is_escaped_in_the_server_rendered_header() -> None:
    evil = '<script>alert(1)</script>"'
    page = task_view("t-1", {"source": evil, "agent_type": "a", "created_at": evil}, {"input_message": evil},
                     {"status": evil, "cost_usd": 0.5}, version="v", auth=False)  # fmt: skip

    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;" in page
    assert set(load_assets()) == {"app.css", "common.js", "list.js", "task.js", "login.js", "favicon.svg"}

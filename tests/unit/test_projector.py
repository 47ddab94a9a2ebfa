"""Unit tests of tasklogger.projector: which file each event lands in, and the JSON views it changes."""

from __future__ import annotations

import copy
import math
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasklogger.projector import (
    AdoptWebhook,
    Append,
    Op,
    ReplaceJson,
    TaskFile,
    View,
    WebhookBuffer,
    final_result_doc,
    input_doc,
    metadata_doc,
    project,
    record_body,
    target_file,
    to_number,
)
from tasklogger.wire import Event, decode

EID = "1732450000000-0"
TS = "2026-01-31T12:00:00Z"

# The file names are spelled out here (not imported) so that a changed constant fails the tests.
WEBHOOK_FLOW = "02-webhook-flow.jsonl"
AGENT_OUTPUT = "03-agent-output.jsonl"
USER_INPUTS = "03-user-inputs.jsonl"
METADATA = "metadata.json"
INPUT = "01-input.json"
FINAL_RESULT = "04-final-result.json"


def ev(
    event_type: str,
    data: dict[str, Any] | None = None,
    *,
    task_id: str | None = "t-1",
    webhook_event_id: str | None = None,
    entry_id: str = EID,
    timestamp: str = TS,
    flag: str | None = None,
    extra: dict[str, str] | None = None,
) -> Event:
    return Event(entry_id, event_type, timestamp, flag, task_id, webhook_event_id, data or {}, extra or {})


def appends(ops: list[Op]) -> list[Append]:
    return [op for op in ops if isinstance(op, Append)]


def replaced(ops: list[Op]) -> dict[str, dict[str, Any]]:
    return {op.name: op.content for op in ops if isinstance(op, ReplaceJson)}


def shape(ops: list[Op]) -> list[tuple[str, str]]:
    """Each op as (kind, file or id), to compare whole op lists compactly."""
    out: list[tuple[str, str]] = []
    for op in ops:
        if isinstance(op, Append):
            target = op.target
            out.append(("append", target.name if isinstance(target, TaskFile) else "buffer:" + target.webhook_id))
        elif isinstance(op, ReplaceJson):
            out.append(("replace", op.name))
        else:
            out.append(("adopt", f"{op.webhook_id}->{op.task_id}"))
    return out


# ------------------------------------------------------------------- every type of WIRE-FORMAT.md: its primary file

WEBHOOK_TYPES = [
    "webhook:received",
    "webhook:validated",
    "webhook:matched",
    "webhook:task_created",
    "webhook:payload",
    "webhook:skipped",
    "response:immediate",
    "notification:ops",
]
AGENT_OUTPUT_TYPES = [
    "task:created",
    "task:started",
    "task:context_built",
    "task:output",
    "task:thinking",
    "task:tool_call",
    "task:tool_result",
    "task:raw_output",
    "task:metrics",
    "task:response_posted",
    "task:completed",
    "task:failed",
    "knowledge:query",
    "knowledge:result",
    "knowledge:tool_call",
    "knowledge:context_used",
    "task:something_new",
    "knowledge:something_new",
    "brand:new",
    "no-colon",
]
PRIMARY_FILE = {
    **{t: WEBHOOK_FLOW for t in WEBHOOK_TYPES},
    **{t: AGENT_OUTPUT for t in AGENT_OUTPUT_TYPES},
    "task:user_input": USER_INPUTS,
}


@pytest.mark.parametrize(("event_type", "expected"), sorted(PRIMARY_FILE.items()))
def test_target_file(event_type: str, expected: str) -> None:
    assert expected == target_file(ev(event_type))


@pytest.mark.parametrize(("event_type", "expected"), sorted(PRIMARY_FILE.items()))
def test_every_event_has_exactly_one_append_to_its_primary_file(event_type: str, expected: str) -> None:
    event = ev(event_type, {"k": "v"}, task_id="t-1")
    ops = project(event, View())
    assert [Append(TaskFile("t-1", expected), record_body(event))] == appends(ops)


#: The whole op list of each type that carries a task id (and no webhook id).
EXPECTED_OPS: dict[str, list[tuple[str, str]]] = {
    **{t: [("append", WEBHOOK_FLOW)] for t in WEBHOOK_TYPES},
    **{t: [("append", AGENT_OUTPUT)] for t in AGENT_OUTPUT_TYPES},
    "task:user_input": [("append", USER_INPUTS)],
    "task:created": [("append", AGENT_OUTPUT), ("replace", METADATA), ("replace", INPUT)],
    "task:context_built": [("append", AGENT_OUTPUT), ("replace", INPUT)],
    "task:completed": [("append", AGENT_OUTPUT), ("replace", FINAL_RESULT)],
    "task:failed": [("append", AGENT_OUTPUT), ("replace", FINAL_RESULT)],
}


@pytest.mark.parametrize(("event_type", "expected"), sorted(EXPECTED_OPS.items()))
def test_op_list_per_type(event_type: str, expected: list[tuple[str, str]]) -> None:
    assert expected == shape(project(ev(event_type), View()))


@pytest.mark.parametrize("event_type", sorted(PRIMARY_FILE))
def test_views_belong_to_the_events_task(event_type: str) -> None:
    for op in project(ev(event_type, task_id="t-77"), View()):
        if isinstance(op, ReplaceJson):
            assert "t-77" == op.task_id
            assert "t-77" == op.content["task_id"]
        elif isinstance(op, Append):
            assert TaskFile("t-77", PRIMARY_FILE[event_type]) == op.target


# --------------------------------------------------------------------------------------------------- record body


def test_record_body_minimal() -> None:
    assert {"id": EID, "type": "task:output", "ts": TS, "task_id": "t-1", "data": {}} == record_body(ev("task:output"))


def test_record_body_full_and_in_the_documented_member_order() -> None:
    data = {"content": "x", "nested": {"a": [1, None]}, "task_id": "t-1"}
    event = ev(
        "webhook:task_created",
        data,
        webhook_event_id="w-1",
        timestamp="2024-11-24T12:06:40.000Z",
        flag="missing",
        extra={"trace": "abc"},
    )
    body = record_body(event)
    assert {
        "id": EID,
        "type": "webhook:task_created",
        "ts": "2024-11-24T12:06:40.000Z",
        "ts_flag": "missing",
        "task_id": "t-1",
        "webhook_event_id": "w-1",
        "fields": {"trace": "abc"},
        "data": data,
    } == body
    assert ["id", "type", "ts", "ts_flag", "task_id", "webhook_event_id", "fields", "data"] == list(body)


def test_record_body_without_task_id() -> None:
    body = record_body(ev("webhook:received", {"source": "github"}, task_id=None, webhook_event_id="w-1"))
    assert {
        "id": EID,
        "type": "webhook:received",
        "ts": TS,
        "webhook_event_id": "w-1",
        "data": {"source": "github"},
    } == (body)


def test_invalid_timestamp_flag_is_recorded() -> None:
    body = record_body(ev("task:output", timestamp="yesterday", flag="invalid"))
    assert ("yesterday", "invalid") == (body["ts"], body["ts_flag"])


@pytest.mark.parametrize("event_type", sorted(PRIMARY_FILE))
def test_all_data_fields_are_kept_in_the_record(event_type: str) -> None:
    data = {
        "task_id": "t-1",
        "source": "jira",
        "cost_usd": "not-a-number",
        "input": {"cmd": ["ls", "-la"], "cwd": None},
        "big": "x" * 10_000,
        "unicode": "日本語 ✓",
        "null_member": None,
        "number": 1.5,
        "flag": False,
        "brand_new_member": {"deep": [{"er": 1}]},
    }
    ops = project(ev(event_type, copy.deepcopy(data)), View())
    (primary,) = appends(ops)
    assert data == primary.body["data"]


# ----------------------------------------------------------------------------------------------------- task:created

CREATED_DATA = {
    "task_id": "t-1",
    "source": "github",
    "assigned_agent": "planner",
    "input_message": "Fix the flaky test",
    "user_id": "u-9",
    "machine_id": "m-3",
    "session_id": "s-5",
    "conversation_id": "c-7",
}


def test_task_created_metadata() -> None:
    ops = project(ev("task:created", dict(CREATED_DATA)), View())
    assert [ReplaceJson("t-1", METADATA, {
        "task_id": "t-1",
        "source": "github",
        "agent_type": "planner",
        "user_id": "u-9",
        "machine_id": "m-3",
        "session_id": "s-5",
        "conversation_id": "c-7",
        "created_at": TS,
        "stream_id": EID,
        "data": CREATED_DATA,
    })] == [op for op in ops if isinstance(op, ReplaceJson) and op.name == METADATA]  # fmt: skip


def test_task_created_input() -> None:
    ops = project(ev("task:created", dict(CREATED_DATA)), View())
    assert {
        "task_id": "t-1",
        "input_message": "Fix the flaky test",
        "source": "github",
        "user_id": "u-9",
        "created_at": TS,
        "stream_ids": {"task:created": EID},
    } == replaced(ops)[INPUT]


@pytest.mark.parametrize(
    ("data", "agent"),
    [
        ({"assigned_agent": "planner"}, "planner"),
        ({"agent_type": "coder"}, "coder"),
        ({"assigned_agent": "planner", "agent_type": "coder"}, "planner"),
        ({}, None),
        ({"agent_type": 7}, "7"),
    ],
)
def test_metadata_agent_type_alias(data: dict[str, Any], agent: str | None) -> None:
    assert agent == metadata_doc(ev("task:created", data))["agent_type"]


def test_metadata_null_assigned_agent_falls_back_to_agent_type() -> None:
    """Any field may be null: a null assigned_agent is as good as a missing one."""
    assert "coder" == metadata_doc(ev("task:created", {"assigned_agent": None, "agent_type": "coder"}))["agent_type"]


def test_metadata_with_missing_fields_and_non_text_values() -> None:
    doc = metadata_doc(ev("task:created", {"user_id": 42, "machine_id": None, "source": True}))
    assert {
        "task_id": "t-1",
        "source": "True",
        "agent_type": None,
        "user_id": "42",
        "machine_id": None,
        "session_id": None,
        "conversation_id": None,
        "created_at": TS,
        "stream_id": EID,
        "data": {"user_id": 42, "machine_id": None, "source": True},
    } == doc


# ----------------------------------------------------------------------------------------------- task:context_built

CONTEXT_DATA = {
    "enriched_prompt": "P" * 50_000,
    "flow_id": "f-1",
    "conversation_id": "c-7",
    "source_metadata": {"repo": "acme/api", "issue": 12},
}
CTX_EID = "1732450000500-0"
CTX_TS = "2026-01-31T12:00:05.250000+00:00"


def created_input() -> dict[str, Any]:
    return replaced(project(ev("task:created", dict(CREATED_DATA)), View()))[INPUT]


def test_context_built_enriches_the_input_and_keeps_the_created_fields() -> None:
    previous = created_input()
    event = ev("task:context_built", dict(CONTEXT_DATA), entry_id=CTX_EID, timestamp=CTX_TS)
    ops = project(event, View(input_doc=previous))
    assert [("append", AGENT_OUTPUT), ("replace", INPUT)] == shape(ops)
    assert {
        "task_id": "t-1",
        "input_message": "Fix the flaky test",
        "source": "github",
        "user_id": "u-9",
        "created_at": TS,
        "enriched_prompt": "P" * 50_000,
        "flow_id": "f-1",
        "conversation_id": "c-7",
        "source_metadata": {"repo": "acme/api", "issue": 12},
        "context_built_at": CTX_TS,
        "stream_ids": {"task:created": EID, "task:context_built": CTX_EID},
    } == replaced(ops)[INPUT]


def test_context_built_does_not_change_the_view_it_was_given() -> None:
    previous = created_input()
    snapshot = copy.deepcopy(previous)
    project(ev("task:context_built", dict(CONTEXT_DATA), entry_id=CTX_EID), View(input_doc=previous))
    assert snapshot == previous


def test_context_built_without_a_created_input() -> None:
    event = ev("task:context_built", dict(CONTEXT_DATA), entry_id=CTX_EID, timestamp=CTX_TS)
    assert {
        "task_id": "t-1",
        "enriched_prompt": "P" * 50_000,
        "flow_id": "f-1",
        "conversation_id": "c-7",
        "source_metadata": {"repo": "acme/api", "issue": 12},
        "context_built_at": CTX_TS,
        "stream_ids": {"task:context_built": CTX_EID},
    } == input_doc(event, None)


def test_created_after_context_built_keeps_the_context() -> None:
    context = input_doc(ev("task:context_built", dict(CONTEXT_DATA), entry_id=CTX_EID, timestamp=CTX_TS), None)
    ops = project(ev("task:created", dict(CREATED_DATA)), View(input_doc=context))
    doc = replaced(ops)[INPUT]
    assert "P" * 50_000 == doc["enriched_prompt"]
    assert "Fix the flaky test" == doc["input_message"]
    assert {"task:created": EID, "task:context_built": CTX_EID} == doc["stream_ids"]


def test_second_context_built_overwrites_its_own_fields_and_keeps_the_conversation() -> None:
    first = input_doc(ev("task:context_built", dict(CONTEXT_DATA), entry_id=CTX_EID), created_input())
    second = input_doc(
        ev("task:context_built", {"enriched_prompt": "new", "flow_id": "f-2"}, entry_id="1732450000900-0"), first
    )
    assert ("new", "f-2", "c-7") == (second["enriched_prompt"], second["flow_id"], second["conversation_id"])
    assert "1732450000900-0" == second["stream_ids"]["task:context_built"]
    assert "Fix the flaky test" == second["input_message"]


# --------------------------------------------------------------------------------------- task:completed / task:failed


def test_completed_final_result_with_numbers_from_strings() -> None:
    data = {
        "status": "success",
        "result": "Opened PR #12",
        "cost_usd": "0.12",
        "input_tokens": "100",
        "output_tokens": "2500",
        "duration_seconds": "12.5",
        "exit_code": "0",
    }
    ops = project(ev("task:completed", dict(data)), View())
    assert [("append", AGENT_OUTPUT), ("replace", FINAL_RESULT)] == shape(ops)
    assert {
        "task_id": "t-1",
        "status": "success",
        "cost_usd": 0.12,
        "input_tokens": 100,
        "output_tokens": 2500,
        "duration_seconds": 12.5,
        "exit_code": 0,
        "result": "Opened PR #12",
        "error": None,
        "finished_at": TS,
        "event_type": "task:completed",
        "stream_id": EID,
        "data": data,
    } == replaced(ops)[FINAL_RESULT]


def test_final_result_number_types() -> None:
    doc = final_result_doc(
        ev("task:completed", {"cost_usd": 1, "input_tokens": 100.0, "output_tokens": "1e3", "duration_seconds": "3"})
    )
    assert (1.0, 100, 1000, 3.0) == (
        doc["cost_usd"],
        doc["input_tokens"],
        doc["output_tokens"],
        doc["duration_seconds"],
    )
    assert (float, int, int, float) == tuple(
        type(doc[k]) for k in ("cost_usd", "input_tokens", "output_tokens", "duration_seconds")
    )


def test_completed_without_status_is_completed() -> None:
    doc = final_result_doc(ev("task:completed", {"result": "ok"}))
    assert "completed" == doc["status"]
    assert {
        "cost_usd": None,
        "input_tokens": None,
        "output_tokens": None,
        "duration_seconds": None,
        "exit_code": None,
    } == {k: doc[k] for k in ("cost_usd", "input_tokens", "output_tokens", "duration_seconds", "exit_code")}
    assert "invalid_numbers" not in doc  # missing is not invalid


def test_failed_final_result() -> None:
    data = {"status": "success", "error": "Timeout after 600 s", "cost_usd": "0.5", "exit_code": "137"}
    ops = project(ev("task:failed", dict(data)), View())
    assert [("append", AGENT_OUTPUT), ("replace", FINAL_RESULT)] == shape(ops)
    assert {
        "task_id": "t-1",
        "status": "failed",
        "cost_usd": 0.5,
        "input_tokens": None,
        "output_tokens": None,
        "duration_seconds": None,
        "exit_code": 137,
        "result": None,
        "error": "Timeout after 600 s",
        "finished_at": TS,
        "event_type": "task:failed",
        "stream_id": EID,
        "data": data,
    } == replaced(ops)[FINAL_RESULT]


def test_bad_numbers_become_null_and_are_listed() -> None:
    data = {
        "cost_usd": "abc",
        "input_tokens": "12.5",
        "output_tokens": True,
        "duration_seconds": "NaN",
        "exit_code": [0],
    }
    doc = final_result_doc(ev("task:completed", dict(data)))
    assert {
        "cost_usd": None,
        "input_tokens": None,
        "output_tokens": None,
        "duration_seconds": None,
        "exit_code": None,
    } == {k: doc[k] for k in ("cost_usd", "input_tokens", "output_tokens", "duration_seconds", "exit_code")}
    assert ["cost_usd", "input_tokens", "output_tokens", "duration_seconds", "exit_code"] == doc["invalid_numbers"]
    assert data == doc["data"]  # what was sent stays available


def test_only_the_bad_numbers_are_listed() -> None:
    doc = final_result_doc(ev("task:completed", {"cost_usd": "0.12", "input_tokens": "lots", "exit_code": 0}))
    assert (0.12, None, 0) == (doc["cost_usd"], doc["input_tokens"], doc["exit_code"])
    assert ["input_tokens"] == doc["invalid_numbers"]


@pytest.mark.parametrize(
    "data",
    [
        {"exit_code": "1e20"},
        {"input_tokens": 1e20},  # what orjson makes of a JSON integer beyond 64 bits
        {"output_tokens": "18446744073709551616"},
    ],
)
def test_final_result_is_always_serialisable(data: dict[str, Any]) -> None:
    """The store writes the view with orjson, which refuses integers beyond 64 bits; the data alone is fine."""
    doc = final_result_doc(ev("task:completed", data))
    orjson.dumps(doc["data"])
    assert doc == orjson.loads(orjson.dumps(doc))


# ------------------------------------------------------------------------------------------------ webhook routing


@pytest.mark.parametrize("event_type", WEBHOOK_TYPES)
def test_webhook_step_without_a_known_task_goes_to_the_buffer(event_type: str) -> None:
    event = ev(event_type, {"source": "github"}, task_id=None, webhook_event_id="w-1")
    assert [Append(WebhookBuffer("w-1"), record_body(event))] == project(event, View())


@pytest.mark.parametrize("event_type", WEBHOOK_TYPES)
def test_webhook_step_of_an_attached_webhook_goes_to_the_task(event_type: str) -> None:
    event = ev(event_type, {"source": "github"}, task_id=None, webhook_event_id="w-1")
    assert [
        AdoptWebhook("w-1", "t-9"),
        Append(TaskFile("t-9", WEBHOOK_FLOW), record_body(event)),
    ] == project(event, View(webhook_task="t-9"))


@pytest.mark.parametrize(
    "event_type", ["webhook:task_created", "response:immediate", "notification:ops", "webhook:matched"]
)
def test_webhook_event_carrying_the_task_id_adopts_before_appending(event_type: str) -> None:
    event = ev(event_type, {"task_id": "t-1", "source": "slack"}, task_id="t-1", webhook_event_id="w-1")
    ops = project(event, View())
    assert [AdoptWebhook("w-1", "t-1"), Append(TaskFile("t-1", WEBHOOK_FLOW), record_body(event))] == ops


def test_the_events_own_task_id_wins_over_the_view() -> None:
    event = ev("webhook:task_created", task_id="t-1", webhook_event_id="w-1")
    assert [AdoptWebhook("w-1", "t-1"), Append(TaskFile("t-1", WEBHOOK_FLOW), record_body(event))] == project(
        event, View(webhook_task="t-other")
    )


def test_webhook_namespace_event_with_only_a_task_id_appends_without_adopting() -> None:
    event = ev("response:immediate", {"target": "slack"}, task_id="t-1")
    assert [Append(TaskFile("t-1", WEBHOOK_FLOW), record_body(event))] == project(event, View())


def test_buffered_record_body_has_no_task_id() -> None:
    event = ev("webhook:received", {"payload_size": 12}, task_id=None, webhook_event_id="w-1")
    (op,) = project(event, View())
    assert isinstance(op, Append)
    assert "task_id" not in op.body
    assert "w-1" == op.body["webhook_event_id"]


def test_input_doc_from_the_view_is_ignored_by_other_types() -> None:
    view = View(input_doc={"task_id": "t-1", "input_message": "x"}, webhook_task="t-2")
    assert [("append", AGENT_OUTPUT)] == shape(project(ev("task:output"), view))


def test_project_is_pure() -> None:
    data = {"status": "ok", "cost_usd": "0.1", "nested": {"a": [1]}}
    event = ev("task:completed", data)
    before = copy.deepcopy(data)
    assert project(event, View()) == project(event, View())
    assert before == event.data


def test_project_from_decoded_entries() -> None:
    created = decode(
        "1732450000000-0",
        {
            b"type": b"task:created",
            b"timestamp": b"2026-01-31T12:00:00Z",
            b"data": orjson.dumps({"task_id": "t-5", "source": "sentry", "agent_type": "triage", "input_message": "x"}),
        },
        max_entry_bytes=1 << 20,
    )
    ops = project(created, View())
    assert [("append", AGENT_OUTPUT), ("replace", METADATA), ("replace", INPUT)] == shape(ops)
    assert "t-5" == appends(ops)[0].target.task_id  # type: ignore[union-attr]
    assert ("sentry", "triage") == (replaced(ops)[METADATA]["source"], replaced(ops)[METADATA]["agent_type"])

    received = decode(
        "1732450000001-0", {b"type": b"webhook:received", b"webhook_event_id": b"w-5"}, max_entry_bytes=1024
    )
    body = {"id": "1732450000001-0", "type": "webhook:received", "ts": "2024-11-24T12:06:40.001Z", "ts_flag": "missing"}
    assert [Append(WebhookBuffer("w-5"), {**body, "webhook_event_id": "w-5", "data": {}})] == project(received, View())


# ------------------------------------------------------------------------------------------------------- to_number


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        (None, int, (None, True)),
        (None, float, (None, True)),
        ("", int, (None, True)),
        ("", float, (None, True)),
        (True, int, (None, False)),
        (False, float, (None, False)),
        ("0.12", float, (0.12, True)),
        ("100", int, (100, True)),
        ("100", float, (100.0, True)),
        (100, float, (100.0, True)),
        (100, int, (100, True)),
        (0, int, (0, True)),
        ("0", float, (0.0, True)),
        ("-1", int, (-1, True)),
        (" 42 ", int, (42, True)),
        ("1e3", int, (1000, True)),
        ("1e3", float, (1000.0, True)),
        ("1.0", int, (1, True)),
        (1.0, int, (1, True)),
        (2.5, int, (None, False)),
        ("2.5", int, (None, False)),
        (2.5, float, (2.5, True)),
        (float("nan"), float, (None, False)),
        (float("nan"), int, (None, False)),
        ("nan", float, (None, False)),
        ("NaN", int, (None, False)),
        (float("inf"), float, (None, False)),
        ("inf", int, (None, False)),
        ("-inf", float, (None, False)),
        ("1e400", float, (None, False)),
        (10**400, float, (None, False)),
        ("abc", int, (None, False)),
        ("abc", float, (None, False)),
        ("0x10", int, (None, False)),
        ("12 tokens", int, (None, False)),
        ([1], int, (None, False)),
        ({"a": 1}, float, (None, False)),
        ("null", int, (None, False)),
    ],
)
def test_to_number(value: Any, kind: type[int] | type[float], expected: tuple[int | float | None, bool]) -> None:
    actual = to_number(value, kind)
    assert expected == actual
    if expected[0] is not None:
        assert kind is type(actual[0])


@pytest.mark.parametrize("value", ["1e20", 1e20, 2**64, "18446744073709551616", -(2**63) - 1])
def test_to_number_int_beyond_64_bits_is_invalid(value: Any) -> None:
    """An int the store cannot serialise (orjson: 64-bit range) is not a usable number."""
    assert (None, False) == to_number(value, int)


@pytest.mark.parametrize("value", [2**63 - 1, -(2**63), "9007199254740992"])
def test_to_number_int_within_64_bits_is_kept(value: Any) -> None:
    number, ok = to_number(value, int)
    assert ok
    assert int(value) == number


@given(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.lists(st.integers(), max_size=2),
    st.sampled_from([int, float]),
)
def test_to_number_never_raises_and_returns_the_kind(value: Any, kind: type[int] | type[float]) -> None:
    number, ok = to_number(value, kind)
    if number is None:
        return
    assert ok
    assert kind is type(number)
    assert math.isfinite(number)

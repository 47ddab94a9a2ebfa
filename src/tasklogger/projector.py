"""Map one event to the file operations it causes (pure: no I/O, no clock).

This is the one place where WIRE-FORMAT.md's layout lives. Every event becomes exactly one chained record in
exactly one JSONL file (its *primary* operation); ``metadata.json``, ``01-input.json`` and
``04-final-result.json`` are views derived from those records and are replaced atomically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .wire import Event

#: Reserved directory for the service's own state; task ids may not start with a dot, so none collides.
STATE_DIR_NAME = ".tasklogger"
METADATA = "metadata.json"
INPUT = "01-input.json"
WEBHOOK_FLOW = "02-webhook-flow.jsonl"
AGENT_OUTPUT = "03-agent-output.jsonl"
USER_INPUTS = "03-user-inputs.jsonl"
FINAL_RESULT = "04-final-result.json"

JSONL_FILES = (WEBHOOK_FLOW, AGENT_OUTPUT, USER_INPUTS)
JSON_FILES = (METADATA, INPUT, FINAL_RESULT)
TASK_FILES = (METADATA, INPUT, WEBHOOK_FLOW, AGENT_OUTPUT, USER_INPUTS, FINAL_RESULT)

WEBHOOK_NAMESPACES = frozenset({"webhook", "response", "notification"})
FINAL_TYPES = frozenset({"task:completed", "task:failed"})
#: Event types whose projection reads the task's current 01-input.json.
INPUT_TYPES = frozenset({"task:created", "task:context_built"})


@dataclass(frozen=True, slots=True)
class TaskFile:
    """A JSONL file of a task."""

    task_id: str
    name: str


@dataclass(frozen=True, slots=True)
class WebhookBuffer:
    """The reserved buffer of webhook steps whose task is not known yet."""

    webhook_id: str


@dataclass(frozen=True, slots=True)
class Append:
    """Append ``body`` as the next chained record of ``target`` (the store adds ``seq`` and ``hash``)."""

    target: TaskFile | WebhookBuffer
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ReplaceJson:
    """Replace a task's JSON view atomically with ``content``."""

    task_id: str
    name: str
    content: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AdoptWebhook:
    """Move the buffered steps of ``webhook_id`` into the task's 02-webhook-flow.jsonl, and remember the mapping."""

    webhook_id: str
    task_id: str


Op = Append | ReplaceJson | AdoptWebhook


@dataclass(frozen=True, slots=True)
class View:
    """What the projection of one event needs to know about what is already stored."""

    #: The task's current 01-input.json (only looked up for INPUT_TYPES).
    input_doc: dict[str, Any] | None = None
    #: The task a webhook id was already attached to (only looked up for events without a task id).
    webhook_task: str | None = None


def project(event: Event, view: View) -> list[Op]:
    """The operations for ``event``: exactly one Append (its primary record) and the views it changes."""
    body = record_body(event)
    if event.task_id is None:
        assert event.webhook_event_id is not None  # wire.decode guarantees one of the two
        if view.webhook_task is None:
            return [Append(WebhookBuffer(event.webhook_event_id), body)]
        # Adopt first: a buffer left by an interrupted move must land before this step (a no-op otherwise).
        return [
            AdoptWebhook(event.webhook_event_id, view.webhook_task),
            Append(TaskFile(view.webhook_task, WEBHOOK_FLOW), body),
        ]

    task_id = event.task_id
    ops: list[Op] = []
    if event.webhook_event_id is not None and event.namespace in WEBHOOK_NAMESPACES:
        # The buffered earlier steps go first, so the task's webhook flow stays in stream order.
        ops.append(AdoptWebhook(event.webhook_event_id, task_id))
    ops.append(Append(TaskFile(task_id, target_file(event)), body))
    if event.type == "task:created":
        ops.append(ReplaceJson(task_id, METADATA, metadata_doc(event)))
        ops.append(ReplaceJson(task_id, INPUT, input_doc(event, view.input_doc)))
    elif event.type == "task:context_built":
        ops.append(ReplaceJson(task_id, INPUT, input_doc(event, view.input_doc)))
    elif event.type in FINAL_TYPES:
        ops.append(ReplaceJson(task_id, FINAL_RESULT, final_result_doc(event)))
    return ops


def target_file(event: Event) -> str:
    """The JSONL file of a task that holds this event's record."""
    if event.namespace in WEBHOOK_NAMESPACES:
        return WEBHOOK_FLOW
    if event.type == "task:user_input":
        return USER_INPUTS
    # Lifecycle, agent output, metrics, knowledge look-ups and unknown types alike.
    return AGENT_OUTPUT


def record_body(event: Event) -> dict[str, Any]:
    """The record of an event, less ``seq`` and ``hash`` (see docs/records.md)."""
    body: dict[str, Any] = {"id": event.entry_id, "type": event.type, "ts": event.timestamp}
    if event.timestamp_flag is not None:
        body["ts_flag"] = event.timestamp_flag
    if event.task_id is not None:
        body["task_id"] = event.task_id
    if event.webhook_event_id is not None:
        body["webhook_event_id"] = event.webhook_event_id
    if event.extra:
        body["fields"] = event.extra
    body["data"] = event.data
    return body


def metadata_doc(event: Event) -> dict[str, Any]:
    """metadata.json: who asked, from where, on which agent and machine, when."""
    data = event.data
    return {
        "task_id": event.task_id,
        "source": _text(data.get("source")),
        "agent_type": _text(_first(data.get("assigned_agent"), data.get("agent_type"))),
        "user_id": _text(data.get("user_id")),
        "machine_id": _text(data.get("machine_id")),
        "session_id": _text(data.get("session_id")),
        "conversation_id": _text(data.get("conversation_id")),
        "created_at": event.timestamp,
        "stream_id": event.entry_id,
        "data": data,
    }


def input_doc(event: Event, current: dict[str, Any] | None) -> dict[str, Any]:
    """01-input.json: the task's input, enriched by task:context_built; later events overwrite their own fields."""
    doc: dict[str, Any] = dict(current) if current else {"task_id": event.task_id}
    data = event.data
    stream_ids = dict(doc.get("stream_ids") or {})
    stream_ids[event.type] = event.entry_id
    if event.type == "task:created":
        doc.update(
            input_message=data.get("input_message"),
            source=_text(data.get("source")),
            user_id=_text(data.get("user_id")),
            created_at=event.timestamp,
        )
    else:
        doc.update(
            enriched_prompt=data.get("enriched_prompt"),
            flow_id=data.get("flow_id"),
            conversation_id=data.get("conversation_id", doc.get("conversation_id")),
            source_metadata=data.get("source_metadata"),
            context_built_at=event.timestamp,
        )
    doc["stream_ids"] = stream_ids
    return doc


#: Numeric fields of the final result and the type each is normalised to.
FINAL_NUMBERS: dict[str, type[int] | type[float]] = {
    "cost_usd": float,
    "input_tokens": int,
    "output_tokens": int,
    "duration_seconds": float,
    "exit_code": int,
}


def final_result_doc(event: Event) -> dict[str, Any]:
    """04-final-result.json: status, cost, tokens, duration, exit code, result or error."""
    data = event.data
    failed = event.type == "task:failed"
    doc: dict[str, Any] = {
        "task_id": event.task_id,
        "status": "failed" if failed else (_text(data.get("status")) or "completed"),
    }
    invalid: list[str] = []
    for name, kind in FINAL_NUMBERS.items():
        value, ok = to_number(data.get(name), kind)
        doc[name] = value
        if not ok:
            invalid.append(name)
    doc["result"] = data.get("result")
    doc["error"] = data.get("error")
    doc["finished_at"] = event.timestamp
    doc["event_type"] = event.type
    doc["stream_id"] = event.entry_id
    if invalid:
        doc["invalid_numbers"] = invalid
    doc["data"] = data
    return doc


def to_number(value: Any, kind: type[int] | type[float]) -> tuple[int | float | None, bool]:
    """Normalise a number that may arrive as a string; returns (value, parsed). Missing is (None, True)."""
    if value is None or value == "":
        return None, True
    if isinstance(value, bool):
        return None, False
    try:
        number = float(value) if isinstance(value, str) else value
        if not isinstance(number, int | float) or not math.isfinite(number):
            return None, False
        if kind is int:
            if not float(number).is_integer() or not -(2**63) <= int(number) < 2**64:
                return None, False  # JSON cannot carry it faithfully (orjson stops at 64 bits)
            return int(number), True
        return float(number), True
    except (ValueError, OverflowError):
        return None, False


def _first(*values: Any) -> Any:
    return next((value for value in values if value is not None), None)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)

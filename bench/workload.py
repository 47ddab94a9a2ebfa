"""A realistic, deterministic workload: tasks interleaved as producers publish them (see WIRE-FORMAT.md).

Each task is ~27 entries: four webhook steps (with a webhook_event_id, the task id arriving with
webhook:task_created), task:created/started/context_built, agent output, thinking, tool calls and results,
metrics, a user input, and task:completed or task:failed. Bodies are 100 B–4 KB, 1 % of them 10–100 KB.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator

import redis

Fields = dict[str, str]
TS = "2026-01-31T12:00:00.123456+00:00"


def _text(rnd: random.Random) -> str:
    size = rnd.randint(10_000, 100_000) if rnd.random() < 0.01 else rnd.randint(100, 4_000)
    return "".join(rnd.choice("abcdefghij klmnop\n") for _ in range(64)) * (size // 64 + 1)


def task_events(rnd: random.Random, task_id: str) -> list[Fields]:
    """The entries of one task, in the order its producers publish them."""
    hook = str(uuid.UUID(int=rnd.getrandbits(128)))
    source = rnd.choice(["github", "jira", "slack", "sentry"])

    def ev(event_type: str, data: dict[str, object], *, webhook: bool = False, task: bool = True) -> Fields:
        fields = {"type": event_type, "timestamp": TS, "data": json.dumps(data)}
        if webhook:
            fields["webhook_event_id"] = hook
        if task:
            fields["task_id"] = task_id
        return fields

    out = [
        ev("webhook:received", {"source": source, "event_type": "issue_comment", "payload_size": 4096},
           webhook=True, task=False),
        ev("webhook:validated", {"source": source, "signature_valid": True}, webhook=True, task=False),
        ev("webhook:matched", {"source": source, "matched_handler": "mention"}, webhook=True, task=False),
        ev("webhook:task_created", {"task_id": task_id, "source": source, "input_message": "fix the bug"},
           webhook=True, task=False),
        ev("task:created", {"source": source, "assigned_agent": "coder", "input_message": "fix the bug",
                            "user_id": f"user-{rnd.randint(1, 50)}", "machine_id": "m-1", "session_id": "s"}),
        ev("task:started", {"session_id": "s", "conversation_id": "c"}),
        ev("task:context_built", {"enriched_prompt": _text(rnd), "flow_id": "f", "conversation_id": "c"}),
    ]  # fmt: skip
    for n in range(rnd.randint(4, 6)):
        out.append(ev("task:thinking", {"content": _text(rnd)}))
        out.append(
            ev("task:tool_call", {"name": "edit_file", "input": {"path": f"src/{n}.py"}, "_tool_use_id": str(n)})
        )
        out.append(ev("task:tool_result", {"name": "edit_file", "content": _text(rnd)[:5000], "is_error": False}))
        out.append(ev("task:output", {"content": _text(rnd)}))
    out.append(ev("task:metrics", {"cost_usd": "0.42", "input_tokens": "12000", "output_tokens": "900"}))
    out.append(ev("task:user_input", {"content": "yes, go ahead", "question_type": "confirm"}))
    if rnd.random() < 0.9:
        out.append(ev("task:completed", {"status": "completed", "result": "done", "cost_usd": "0.51",
                                         "input_tokens": "13000", "output_tokens": "1000",
                                         "duration_seconds": "42.5", "exit_code": "0"}))  # fmt: skip
    else:
        out.append(ev("task:failed", {"error": "agent crashed", "exit_code": "1"}))
    return out


def interleaved(total: int, *, concurrent: int = 32, seed: int = 1) -> Iterator[Fields]:
    """``total`` entries from ``concurrent`` tasks in progress at once, each task's entries in its own order."""
    rnd = random.Random(seed)
    serial = 0

    def new_task() -> list[Fields]:
        nonlocal serial
        serial += 1
        return task_events(rnd, f"task-{seed}-{serial:07d}")

    running = [new_task() for _ in range(concurrent)]
    for _ in range(total):
        slot = rnd.randrange(concurrent)
        if not running[slot]:
            running[slot] = new_task()
        yield running[slot].pop(0)


def publish(client: redis.Redis, entries: Iterator[Fields] | list[Fields], stream: str = "task_events") -> list[str]:
    """XADD every entry (pipelined in chunks of 500); returns the entry ids in order."""
    ids: list[str] = []
    pipe = client.pipeline(transaction=False)
    pending = 0
    for fields in entries:
        pipe.xadd(stream, fields)  # type: ignore[arg-type]
        pending += 1
        if pending == 500:
            ids.extend(i.decode() for i in pipe.execute())
            pending = 0
    if pending:
        ids.extend(i.decode() for i in pipe.execute())
    return ids

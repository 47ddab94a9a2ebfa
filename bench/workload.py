"""A realistic, deterministic workload, shared by the crash tester and the benchmarks (see WIRE-FORMAT.md).

``interleaved(total)`` yields ``total`` stream entries from 32 tasks in progress at once, each entry a dict of
string fields exactly as the producers ``XADD`` them (``data`` is a JSON string). One task is ~27 entries:

- the webhook steps, keyed by a ``webhook_event_id`` (the task id is not known yet): ``webhook:received``,
  sometimes ``webhook:payload``, ``webhook:validated``, ``webhook:matched``, then ``webhook:task_created``
  whose data names the task, sometimes followed by ``response:immediate``;
- the task's lifecycle, keyed by ``task_id``: ``task:created``, ``task:started``, ``task:context_built``,
  three to five rounds of ``task:thinking`` / ``task:tool_call`` / ``task:tool_result`` / ``task:output`` (now
  and then a ``knowledge:query`` + ``knowledge:result`` pair), ``task:metrics``, ``task:user_input``, sometimes
  ``task:response_posted``, then ``task:completed`` (90 %) or ``task:failed`` (10 %, sometimes followed by a
  ``notification:ops``).

Text bodies are 100 B–4 KB, 1 % of them 10–100 KB (tool results stay within the 5,000 characters producers
send). The same seed gives the same entries, byte for byte.

``destination(fields, webhook_tasks)`` says which file of the logs directory an entry must end up in, derived
from WIRE-FORMAT.md independently of the service's code; the crash tester and the latency benchmark use it.
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta

import redis

Fields = dict[str, str]

STREAM = "task_events"
#: The reserved state directory of the logs directory, where webhook steps wait for their task id.
STATE_DIR = ".tasklogger"
WEBHOOK_NAMESPACES = frozenset({"webhook", "response", "notification"})
START = datetime(2026, 1, 31, 12, 0, 0, tzinfo=UTC)

_WORDS = (
    "the agent reads file src module function returns error test passes fails patch diff commit branch "
    "review issue comment label build deploy config value None True False self import from class def "
    "request response status token cost retry timeout cache index query result context prompt tool call "
    "because so then when if else while for with and or not a an in on at of to by is are was were be"
).split()
_CORPUS_SIZE = 256 * 1024


def _corpus() -> str:
    rnd = random.Random(20260131)
    parts: list[str] = []
    size = 0
    while size < _CORPUS_SIZE:
        line = " ".join(rnd.choice(_WORDS) for _ in range(rnd.randint(4, 16))) + ("\n" if rnd.random() < 0.3 else ". ")
        parts.append(line)
        size += len(line)
    return "".join(parts)


CORPUS = _corpus()


def text(rnd: random.Random, *, limit: int | None = None) -> str:
    """A body of 100 B–4 KB, or 1 % of the time 10–100 KB (at most ``limit`` characters)."""
    size = rnd.randint(10_000, 100_000) if rnd.random() < 0.01 else rnd.randint(100, 4_000)
    if limit is not None:
        size = min(size, limit)
    start = rnd.randrange(0, len(CORPUS) - 100_000)
    return CORPUS[start : start + size]


def _iso_z(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso_micro(at: datetime) -> str:
    return at.isoformat(timespec="microseconds")


def task_events(rnd: random.Random, task_id: str, started: datetime) -> list[Fields]:
    """The entries of one task, in the order its producers publish them."""
    hook = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
    source = rnd.choice(["github", "github", "jira", "slack", "sentry", "dashboard"])
    event_type = {"github": "issue_comment", "jira": "issue_updated", "slack": "app_mention"}.get(source, "alert")
    agent = rnd.choice(["planning", "coding", "review", "triage"])
    session, conversation = f"sess-{rnd.getrandbits(32):08x}", f"conv-{rnd.getrandbits(32):08x}"
    prompt = text(rnd, limit=2_000)
    clock = started

    def ev(kind: str, data: dict[str, object], *, webhook: bool = False) -> Fields:
        nonlocal clock
        clock += timedelta(milliseconds=rnd.randint(5, 3_000))
        namespace = kind.partition(":")[0]
        # The webhook service writes whole seconds with a Z, the agent runner microseconds with +00:00.
        fields = {"type": kind, "timestamp": _iso_z(clock) if webhook else _iso_micro(clock)}
        if namespace in ("task", "knowledge"):
            fields["task_id"] = task_id
        if webhook:
            fields["webhook_event_id"] = hook
        fields["data"] = json.dumps(data)
        return fields

    size = rnd.randint(800, 60_000)
    out = [ev("webhook:received", {"source": source, "event_type": event_type, "payload_size": size}, webhook=True)]
    if rnd.random() < 0.3:
        out.append(ev("webhook:payload", {"source": source, "event_type": event_type,
                                          "payload": {"body": text(rnd), "sender": f"user-{rnd.randint(1, 50)}"}},
                      webhook=True))  # fmt: skip
    out += [
        ev("webhook:validated", {"source": source, "signature_valid": True}, webhook=True),
        ev("webhook:matched", {"source": source, "event_type": event_type, "matched_handler": f"{source}-mention"},
           webhook=True),
        ev("webhook:task_created", {"task_id": task_id, "source": source, "event_type": event_type,
                                    "input_message": prompt}, webhook=True),
    ]  # fmt: skip
    if rnd.random() < 0.5:
        target = f"{source}:comment:{rnd.randint(1, 10**6)}"
        out.append(ev("response:immediate", {"task_id": task_id, "source": source, "response_type": "reaction",
                                             "target": target}, webhook=True))  # fmt: skip
    agent_key = "assigned_agent" if rnd.random() < 0.8 else "agent_type"
    out += [
        ev("task:created", {"task_id": task_id, "source": source, agent_key: agent, "input_message": prompt,
                            "user_id": f"user-{rnd.randint(1, 50)}", "machine_id": f"machine-{rnd.randint(1, 4)}",
                            "session_id": session, "conversation_id": conversation}),
        ev("task:started", {"session_id": session, "conversation_id": conversation}),
        ev("task:context_built", {"enriched_prompt": text(rnd), "flow_id": f"flow-{rnd.getrandbits(24):06x}",
                                  "conversation_id": conversation,
                                  "source_metadata": {"repo": "acme/app", "number": rnd.randint(1, 9999)}}),
    ]  # fmt: skip
    cost, tokens_in, tokens_out = 0.0, 0, 0
    for n in range(rnd.randint(3, 5)):
        tool_use = f"toolu_{rnd.getrandbits(48):012x}"
        tool = rnd.choice(["read_file", "edit_file", "bash", "grep"])
        out.append(ev("task:thinking", {"content": text(rnd)}))
        if rnd.random() < 0.1:
            out.append(ev("knowledge:query", {"query": text(rnd, limit=300), "kb": "docs"}))
            out.append(ev("knowledge:result", {"hits": rnd.randint(0, 8), "content": text(rnd)}))
        out.append(ev("task:tool_call", {"name": tool, "input": {"path": f"src/mod{n}.py", "n": n},
                                         "_tool_use_id": tool_use}))  # fmt: skip
        out.append(ev("task:tool_result", {"name": tool, "content": text(rnd, limit=5_000),
                                           "is_error": rnd.random() < 0.05, "_tool_use_id": tool_use}))  # fmt: skip
        out.append(ev("task:output", {"content": text(rnd)}))
        cost += rnd.uniform(0.01, 0.2)
        tokens_in += rnd.randint(1_000, 20_000)
        tokens_out += rnd.randint(100, 2_000)
    out.append(ev("task:metrics", {"cost_usd": f"{cost:.4f}", "input_tokens": tokens_in, "output_tokens": tokens_out}))
    out.append(ev("task:user_input", {"content": rnd.choice(["yes, go ahead", "no", "use the staging db"]),
                                      "question_type": rnd.choice(["confirm", "free_text"])}))  # fmt: skip
    if rnd.random() < 0.6:
        out.append(ev("task:response_posted", {"method": "mcp", "source": source, "mcp_detected": True,
                                               "fallback_posted": False}))  # fmt: skip
    duration = (clock - started).total_seconds()
    if rnd.random() < 0.9:
        out.append(ev("task:completed", {"status": "completed", "result": text(rnd, limit=2_000),
                                         "cost_usd": f"{cost:.4f}", "input_tokens": str(tokens_in),
                                         "output_tokens": tokens_out, "duration_seconds": f"{duration:.1f}",
                                         "exit_code": 0}))  # fmt: skip
    else:
        out.append(ev("task:failed", {"error": "agent process exited with code 1", "cost_usd": cost,
                                      "duration_seconds": duration, "exit_code": "1"}))  # fmt: skip
        if rnd.random() < 0.5:
            out.append(ev("notification:ops", {"task_id": task_id, "source": source, "notification_type": "failure",
                                               "channel": "#agents-ops"}, webhook=True))  # fmt: skip
    return out


def interleaved(total: int, *, concurrent: int = 32, seed: int = 1) -> Iterator[Fields]:
    """``total`` entries from ``concurrent`` tasks in progress at once, each task's entries in its own order."""
    rnd = random.Random(seed)
    serial = 0

    def new_task() -> deque[Fields]:
        nonlocal serial
        serial += 1
        started = START + timedelta(seconds=serial * 7)
        return deque(task_events(rnd, f"task-{seed}-{serial:07d}", started))

    running = [new_task() for _ in range(concurrent)]
    for _ in range(total):
        slot = rnd.randrange(concurrent)
        if not running[slot]:
            running[slot] = new_task()
        yield running[slot].popleft()


def webhook_tasks(entries: Iterable[Fields]) -> dict[str, str]:
    """webhook_event_id -> task id, for the webhooks whose task id was published (in ``data`` or as a field)."""
    found: dict[str, str] = {}
    for fields in entries:
        hook = fields.get("webhook_event_id")
        if hook is None or hook in found:
            continue
        task = fields.get("task_id") or json.loads(fields.get("data") or "{}").get("task_id")
        if task:
            found[hook] = task
    return found


def buffer_path(webhook_id: str) -> str:
    """Where a webhook step waits while its task id is unknown (the store's reserved, sharded buffer)."""
    shard = hashlib.sha1(webhook_id.encode()).hexdigest()[:2]
    return f"{STATE_DIR}/webhooks/{shard}/{webhook_id}.jsonl"


def destination(fields: Fields, hooks: dict[str, str]) -> str:
    """The file (relative to the logs directory) that must hold this entry once everything is consumed.

    WIRE-FORMAT.md: webhook/response/notification steps go to the task's 02-webhook-flow.jsonl (to the webhook
    buffer while no entry has named the task), task:user_input to 03-user-inputs.jsonl, every other task or
    knowledge event to 03-agent-output.jsonl.
    """
    namespace = fields["type"].partition(":")[0]
    if namespace in WEBHOOK_NAMESPACES:
        hook = fields["webhook_event_id"]
        task = hooks.get(hook)
        return f"{task}/02-webhook-flow.jsonl" if task else buffer_path(hook)
    if fields["type"] == "task:user_input":
        return f"{fields['task_id']}/03-user-inputs.jsonl"
    return f"{fields['task_id']}/03-agent-output.jsonl"


def publish(client: redis.Redis, entries: Iterable[Fields], *, stream: str = STREAM, chunk: int = 500) -> list[str]:
    """XADD every entry with a pipeline, ``chunk`` entries per round trip; returns the entry ids in order."""
    ids: list[str] = []
    pipe = client.pipeline(transaction=False)
    queued = 0
    for fields in entries:
        pipe.xadd(stream, fields)  # type: ignore[arg-type]
        queued += 1
        if queued == chunk:
            ids.extend(_text(i) for i in pipe.execute())
            queued = 0
    if queued:
        ids.extend(_text(i) for i in pipe.execute())
    return ids


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def summary(entries: list[Fields]) -> str:
    """One line: entries, tasks, mean entries per task, bytes, the largest entry."""
    tasks = {f.get("task_id") for f in entries if f.get("task_id")}
    sizes = [sum(len(k) + len(v) for k, v in f.items()) for f in entries]
    return (
        f"{len(entries)} entries, {len(tasks)} tasks ({len(entries) / max(1, len(tasks)):.1f} per task), "
        f"{sum(sizes) / 2**20:.1f} MB, mean {sum(sizes) / max(1, len(sizes)):,.0f} B, "
        f"largest {max(sizes, default=0):,} B"
    )


if __name__ == "__main__":
    import argparse
    from collections import Counter

    parser = argparse.ArgumentParser(description="Print a summary of the workload (no Redis needed).")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sample = list(interleaved(args.events, seed=args.seed))
    print(summary(sample))
    for name, count in sorted(Counter(f["type"] for f in sample).items()):
        print(f"  {name:24} {count}")

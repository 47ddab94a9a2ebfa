"""Sample tasks for a first look: realistic stream entries, published with XADD and paced like a real agent.

Each scenario is a list of steps ``(seconds after the previous step, fields)`` in the producers' wire format
(WIRE-FORMAT.md): webhook steps keyed by a ``webhook_event_id`` until ``webhook:task_created`` names the task,
then the task's lifecycle keyed by ``task_id``, ``data`` as a JSON string, timestamps in both producer styles.
Several tasks start a few seconds apart and their steps interleave on the stream, as they do in production.
"""

from __future__ import annotations

import heapq
import json
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

Fields = dict[str, str]
Data = dict[str, Any]

#: Scenarios in the order ``--tasks N`` cycles through them.
SCENARIOS = ("github-fix", "sentry-triage", "slack-question")
#: Seconds between the starts of consecutive sample tasks (at speed 1).
STAGGER_S = 4.0


@dataclass
class Script:
    """One task's steps: (delay after the previous step in seconds, event type, data, keyed by webhook?)."""

    task_id: str
    webhook_id: str
    steps: list[tuple[float, str, Data, bool]] = field(default_factory=list)

    def hook(self, delay: float, kind: str, data: Data) -> None:
        """A step keyed by the webhook id (the webhook service's events)."""
        self.steps.append((delay, kind, data, True))

    def task(self, delay: float, kind: str, data: Data) -> None:
        """A step keyed by the task id (the agent runner's events)."""
        self.steps.append((delay, kind, data, False))

    def intake(
        self, source: str, event_type: str, handler: str, message: str, *, size: int, payload: Data | None = None
    ) -> None:
        """The webhook service's steps from receiving a webhook to naming the task it created."""
        self.hook(0.0, "webhook:received", {"source": source, "event_type": event_type, "payload_size": size})
        if payload is not None:
            self.hook(0.1, "webhook:payload", {"source": source, "event_type": event_type, "payload": payload})
        self.hook(0.1, "webhook:validated", {"source": source, "signature_valid": True})
        self.hook(0.1, "webhook:matched", {"source": source, "event_type": event_type, "matched_handler": handler})
        created = {"task_id": self.task_id, "source": source, "event_type": event_type, "input_message": message}
        self.hook(0.2, "webhook:task_created", created)


def fields_for(script: Script, kind: str, data: Data, webhook: bool, at: datetime) -> Fields:
    """The stream fields a producer would XADD for one step."""
    # The webhook service writes whole seconds with a Z, the agent runner microseconds with +00:00.
    stamp = at.strftime("%Y-%m-%dT%H:%M:%SZ") if webhook else at.isoformat(timespec="microseconds")
    out: Fields = {"type": kind, "timestamp": stamp}
    if webhook:
        out["webhook_event_id"] = script.webhook_id
    else:
        out["task_id"] = script.task_id
    out["data"] = json.dumps(data)
    return out


def _agent_round(s: Script, rnd: random.Random, meter: list[float], think: str, tool: str, args: Data,
                 result: str, *, error: bool = False, say: str | None = None) -> None:  # fmt: skip
    """Thinking, one tool call and its result, maybe some output, then the running cost and tokens."""
    use_id = f"toolu_{rnd.getrandbits(48):012x}"
    s.task(rnd.uniform(1.0, 2.5), "task:thinking", {"content": think})
    s.task(rnd.uniform(0.4, 1.2), "task:tool_call", {"name": tool, "input": args, "_tool_use_id": use_id})
    s.task(rnd.uniform(0.5, 2.5), "task:tool_result", {"name": tool, "content": result, "is_error": error,
                                                        "_tool_use_id": use_id})  # fmt: skip
    if say:
        s.task(rnd.uniform(0.5, 1.5), "task:output", {"content": say})
    meter[0] += rnd.uniform(0.004, 0.03)
    meter[1] += rnd.randint(1_500, 9_000)
    meter[2] += rnd.randint(80, 700)
    s.task(0.2, "task:metrics", {"cost_usd": f"{meter[0]:.4f}", "input_tokens": int(meter[1]),
                                 "output_tokens": int(meter[2])})  # fmt: skip


def github_fix(task_id: str, rnd: random.Random) -> Script:
    """A GitHub issue comment asks the coding agent for a fix; a test fails once, then the task completes."""
    s = Script(task_id, str(uuid.UUID(int=rnd.getrandbits(128), version=4)))
    issue = rnd.randint(1200, 2400)
    message = (f"@agent please fix #{issue}: signing in fails with HTTP 500 when the e-mail address contains "
               "a plus sign (e.g. ana+test@example.com).")  # fmt: skip
    payload = {
        "action": "created",
        "issue": {"number": issue, "title": "Login 500 with plus sign in e-mail"},
        "comment": {"body": message, "user": {"login": "ana"}},
        "repository": {"full_name": "acme/webapp"},
    }
    s.intake("github", "issue_comment", "github-mention", message, size=7421, payload=payload)
    s.hook(0.3, "response:immediate", {"task_id": task_id, "source": "github", "response_type": "reaction",
                                       "target": f"acme/webapp#{issue}"})  # fmt: skip
    s.task(0.2, "task:created", {"task_id": task_id, "source": "github", "assigned_agent": "coding",
                                 "input_message": message, "user_id": "ana", "machine_id": "runner-2",
                                 "session_id": f"sess-{task_id}", "conversation_id": f"conv-{issue}"})  # fmt: skip
    s.task(0.8, "task:started", {"session_id": f"sess-{task_id}", "conversation_id": f"conv-{issue}"})
    s.task(1.0, "task:context_built", {"enriched_prompt": _prompt(message, "acme/webapp", issue),
                                       "flow_id": f"flow-{issue}", "conversation_id": f"conv-{issue}",
                                       "source_metadata": {"repo": "acme/webapp", "issue": issue}})  # fmt: skip
    meter = [0.0, 0.0, 0.0]
    _agent_round(s, rnd, meter, "The 500 suggests an exception in the login view. Search for where the e-mail is "
                 "parsed before looking up the user.", "grep", {"pattern": "def normalize_email", "path": "src/"},
                 "src/auth/emails.py:14:def normalize_email(address: str) -> str:")  # fmt: skip
    _agent_round(s, rnd, meter, "Read normalize_email to see how it treats '+'.", "read_file",
                 {"path": "src/auth/emails.py"}, _EMAILS_PY)  # fmt: skip
    _agent_round(s, rnd, meter, "The local part is split on '+' and the tag dropped, but the result is then used "
                 "as a regex without escaping. Escape it.", "edit_file",
                 {"path": "src/auth/emails.py", "old": "re.match(local, stored)",
                  "new": "re.match(re.escape(local), stored)"}, "Applied 1 edit to src/auth/emails.py",
                 say="Found it: the e-mail's local part is used as a regular expression unescaped; a '+' makes "
                 "the pattern invalid.")  # fmt: skip
    _agent_round(s, rnd, meter, "Run the auth tests.", "bash", {"command": "pytest tests/auth -q"},
                 "F.......\nFAILED tests/auth/test_emails.py::test_plus_tag - AssertionError: "
                 "'ana@example.com' != 'ana+test@example.com'\n1 failed, 7 passed in 0.84s", error=True)  # fmt: skip
    _agent_round(s, rnd, meter, "The existing test expects the tag to be kept. Keep it and only escape.",
                 "edit_file", {"path": "src/auth/emails.py", "old": "local.split('+')[0]", "new": "local"},
                 "Applied 1 edit to src/auth/emails.py")  # fmt: skip
    _agent_round(
        s,
        rnd,
        meter,
        "Run the tests again.",
        "bash",
        {"command": "pytest tests/auth -q"},
        "........\n8 passed in 0.79s",
        say="All auth tests pass. Shall I open a pull request?",
    )
    s.task(2.5, "task:user_input", {"content": "yes, open the PR against main", "question_type": "confirm"})
    _agent_round(s, rnd, meter, "Open the pull request.", "create_pull_request",
                 {"base": "main", "title": f"Escape the e-mail local part at sign-in (fixes #{issue})"},
                 f"https://github.com/acme/webapp/pull/{issue + 17}")  # fmt: skip
    s.task(0.6, "task:response_posted", {"method": "comment", "source": "github", "mcp_detected": False,
                                         "fallback_posted": False})  # fmt: skip
    s.task(
        0.4,
        "task:completed",
        {
            "status": "completed",
            "cost_usd": f"{meter[0]:.4f}",
            "input_tokens": int(meter[1]),
            "output_tokens": int(meter[2]),
            "duration_seconds": f"{sum(st[0] for st in s.steps[7:]):.1f}",
            "exit_code": 0,
            "result": f"Opened https://github.com/acme/webapp/pull/{issue + 17}: the e-mail "
            "local part is escaped before matching; a test covers plus-tagged addresses.",
        },
    )
    return s


def sentry_triage(task_id: str, rnd: random.Random) -> Script:
    """A Sentry alert starts the triage agent; the logs it needs are out of reach and the task fails."""
    s = Script(task_id, str(uuid.UUID(int=rnd.getrandbits(128), version=4)))
    message = "Sentry alert: TimeoutError in payments.charge (212 events in 5 minutes, production)"
    s.intake("sentry", "alert", "sentry-alert", message, size=18211)
    s.task(0.2, "task:created", {"task_id": task_id, "source": "sentry", "agent_type": "triage",
                                 "input_message": message, "user_id": "sentry-bot", "machine_id": "runner-1",
                                 "session_id": f"sess-{task_id}"})  # fmt: skip
    s.task(0.7, "task:started", {"session_id": f"sess-{task_id}"})
    s.task(0.4, "knowledge:query", {"query": "payments charge timeout runbook", "kb": "runbooks"})
    s.task(0.8, "knowledge:result", {"hits": 2, "content": "Runbook PAY-7: check the provider status page, then "
                                     "the connection pool of payments-db (max 40)."})  # fmt: skip
    meter = [0.0, 0.0, 0.0]
    _agent_round(s, rnd, meter, "Follow the runbook: look at the pool usage first.", "bash",
                 {"command": "kubectl -n payments logs deploy/payments --since=10m | grep -c 'pool exhausted'"},
                 "error: You must be logged in to the server (Unauthorized)", error=True)  # fmt: skip
    _agent_round(s, rnd, meter, "No cluster access from this runner. Try the metrics API instead.", "http_get",
                 {"url": "https://metrics.internal/api/v1/query?query=payments_db_pool_in_use"},
                 "403 Forbidden: token lacks scope metrics:read", error=True)  # fmt: skip
    s.task(
        0.8,
        "task:output",
        {
            "content": "I cannot reach the cluster or the metrics API from this runner, so I "
            "cannot confirm the pool exhaustion. Escalating to the on-call engineer."
        },
    )
    s.task(0.5, "task:failed", {"error": "Triage incomplete: no read access to payments logs or metrics "
                                "(Unauthorized, 403)", "cost_usd": f"{meter[0]:.4f}", "input_tokens": int(meter[1]),
                                "output_tokens": int(meter[2]), "exit_code": 1})  # fmt: skip
    s.hook(0.3, "notification:ops", {"task_id": task_id, "source": "sentry", "notification_type": "task_failed",
                                     "channel": "#payments-oncall"})  # fmt: skip
    return s


def slack_question(task_id: str, rnd: random.Random) -> Script:
    """A question in Slack, answered from the knowledge base in a few steps."""
    s = Script(task_id, str(uuid.UUID(int=rnd.getrandbits(128), version=4)))
    message = "@agent how do I rotate the staging database password?"
    s.intake("slack", "app_mention", "slack-ask", message, size=2210)
    s.task(
        0.2,
        "task:created",
        {
            "task_id": task_id,
            "source": "slack",
            "assigned_agent": "planning",
            "input_message": message,
            "user_id": "U024BE7LH",
            "machine_id": "runner-3",
        },
    )
    s.task(0.6, "task:started", {})
    s.task(0.5, "knowledge:query", {"query": "rotate staging database password", "kb": "docs"})
    s.task(0.9, "knowledge:result", {"hits": 1, "content": "docs/ops/secrets.md#rotation"})
    meter = [0.0, 0.0, 0.0]
    _agent_round(
        s,
        rnd,
        meter,
        "Read the rotation section.",
        "read_file",
        {"path": "docs/ops/secrets.md"},
        "## Rotation\n1. vault write -f database/rotate-role/staging\n2. Restart the api deployment.",
    )
    s.task(0.8, "task:output", {"content": "Run `vault write -f database/rotate-role/staging`, then restart the "
                                "api deployment (docs/ops/secrets.md#rotation)."})  # fmt: skip
    s.task(0.4, "task:response_posted", {"method": "thread_reply", "source": "slack", "mcp_detected": True,
                                         "fallback_posted": False})  # fmt: skip
    s.task(0.3, "task:completed", {"status": "completed", "cost_usd": f"{meter[0]:.4f}",
                                   "input_tokens": int(meter[1]), "output_tokens": int(meter[2]),
                                   "duration_seconds": "6.1", "exit_code": 0,
                                   "result": "Answered in the thread with the rotation steps."})  # fmt: skip
    return s


BUILDERS: dict[str, Callable[[str, random.Random], Script]] = {
    "github-fix": github_fix,
    "sentry-triage": sentry_triage,
    "slack-question": slack_question,
}


def scripts(count: int, *, seed: int | None = None) -> list[Script]:
    """``count`` sample tasks cycling through the scenarios, with fresh task ids (or fixed ones for a seed)."""
    rnd = random.Random(seed)
    out = []
    for n in range(count):
        scenario = SCENARIOS[n % len(SCENARIOS)]
        task_id = f"demo-{scenario.split('-')[0]}-{rnd.getrandbits(24):06x}"
        out.append(BUILDERS[scenario](task_id, rnd))
    return out


def timeline(batch: list[Script], *, speed: float = 1.0) -> Iterator[tuple[float, Script, str, Data, bool]]:
    """Every step of ``batch`` with its offset in seconds from the start, merged in time order."""
    heap: list[tuple[float, int, int]] = []
    for n, script in enumerate(batch):
        if script.steps:
            heapq.heappush(heap, ((n * STAGGER_S + script.steps[0][0]) / speed, n, 0))
    while heap:
        at, n, k = heapq.heappop(heap)
        _, kind, data, webhook = batch[n].steps[k]
        yield at, batch[n], kind, data, webhook
        if k + 1 < len(batch[n].steps):
            heapq.heappush(heap, (at + batch[n].steps[k + 1][0] / speed, n, k + 1))


def publish(
    client: redis.Redis,
    stream: str,
    batch: list[Script],
    *,
    speed: float = 1.0,
    on_step: Callable[[Script, str, str], None] | None = None,
) -> int:
    """XADD every step of ``batch`` at its pace (``speed`` 10 is ten times faster); returns the entries written.

    Timestamps follow the scripts' own clock, so durations look real at any speed: at speed 1 they are the wall
    clock; faster, they start earlier and the last one is the moment it is published (never in the future).
    """
    steps = list(timeline(batch, speed=speed))
    total = steps[-1][0] * speed if steps else 0.0
    start = time.monotonic()
    origin = datetime.now(UTC) - timedelta(seconds=total - total / speed)
    written = 0
    for offset, script, kind, data, webhook in steps:
        pause = start + offset - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        at = origin + timedelta(seconds=offset * speed)
        entry_id = client.xadd(stream, fields_for(script, kind, data, webhook, at))  # type: ignore[arg-type]
        written += 1
        if on_step is not None:
            on_step(script, kind, entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id))
    return written


def _prompt(message: str, repo: str, issue: int) -> str:
    return (
        f"You are the coding agent for {repo}.\n\nRequest (issue #{issue}):\n{message}\n\n"
        "Repository guidelines:\n- Write a test for every fix.\n- Keep changes minimal.\n- Open a pull request "
        "against main when the tests pass and the requester agrees.\n\nRelevant files (from the index):\n"
        + "\n".join(f"- src/auth/{name}.py" for name in ("emails", "views", "sessions", "passwords", "tokens"))
        + "\n\nRecent commits touching src/auth:\n"
        + "\n".join(f"- {uuid.UUID(int=issue * 7919 + n).hex[:8]} auth: small refactor #{n}" for n in range(12))
    )


_EMAILS_PY = '''import re


def normalize_email(address: str) -> str:
    """Lower-case the domain; keep the local part as typed."""
    local, _, domain = address.partition("@")
    return f"{local}@{domain.lower()}"


def matches(address: str, stored: str) -> bool:
    local = normalize_email(address).split("@")[0].split("+")[0]
    return re.match(local, stored) is not None
'''

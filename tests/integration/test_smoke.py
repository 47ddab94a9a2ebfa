"""The whole path once: publish a small task, consume it, read it back over the files."""

from __future__ import annotations

import orjson

from tests.support import Publisher, consumer_run, settings_for


def test_one_task_lands_in_its_files(redis_url: str, publisher: Publisher, logs_dir) -> None:  # type: ignore[no-untyped-def]
    publisher.event("webhook:received", webhook_event_id="w1", data={"source": "github"})
    publisher.event("webhook:task_created", webhook_event_id="w1", data={"task_id": "t1"})
    publisher.event("task:created", task_id="t1", data={"source": "github", "agent_type": "coder"})
    publisher.event("task:completed", task_id="t1", data={"cost_usd": "0.5", "exit_code": "0"})

    with consumer_run(settings_for(redis_url, logs_dir)) as run:
        run.wait_drained()

    flow = [orjson.loads(line) for line in (logs_dir / "t1" / "02-webhook-flow.jsonl").read_bytes().splitlines()]
    assert [r["type"] for r in flow] == ["webhook:received", "webhook:task_created"]
    final = orjson.loads((logs_dir / "t1" / "04-final-result.json").read_bytes())
    assert final["cost_usd"] == 0.5 and final["exit_code"] == 0 and final["status"] == "completed"

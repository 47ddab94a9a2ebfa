"""The client commands of the installed ``tasklogger`` script (``demo``, ``tasks``, ``show``, ``tail``,
``dead-letters``), run as a user runs them, against a real ``tasklogger serve`` process and a real redis-server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Publisher, RedisProcess, ServiceProcess, free_port, running_redis, running_service, wait_until

TOKEN = "cli-token-0123456789abcdef"


def tasklogger(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the installed console script and capture what it prints."""
    binary = shutil.which("tasklogger")
    assert binary, "the tasklogger console script is not installed (pip install -e .)"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKLOGGER_") and k != "REDIS_URL"}
    clean.update(env or {})
    return subprocess.run([binary, *args], env=clean, capture_output=True, text=True, timeout=timeout, check=False)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tasklogger: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def cli_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    with running_redis(tmp_path_factory.mktemp("cli-redis")) as proc:
        yield proc


@pytest.fixture(scope="module")
def service(cli_redis: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    with running_service(tmp_path_factory.mktemp("cli") / "logs", cli_redis.url) as proc:
        yield proc


@pytest.fixture
def env(service: ServiceProcess) -> dict[str, str]:
    return {"TASKLOGGER_URL": f"http://127.0.0.1:{service.port}"}


@pytest.fixture
def pub(cli_redis: RedisProcess) -> Iterator[Publisher]:
    client = cli_redis.client()
    yield Publisher(client)
    client.close()


@pytest.fixture(scope="module")
def demo_tasks(cli_redis: RedisProcess, service: ServiceProcess) -> list[str]:
    """``tasklogger demo`` publishes three sample tasks (fast); their ids, once the service has all of them."""
    result = tasklogger("demo", "--tasks", "3", "--speed", "200", "--redis-url", cli_redis.url, "--json")
    assert result.returncode == 0, result.stderr
    steps = [json.loads(line) for line in result.stdout.splitlines()]
    ids = list(dict.fromkeys(step["task_id"] for step in steps))
    assert len(ids) == 3 and len(steps) > 60
    assert {step["type"] for step in steps} >= {"webhook:received", "task:created", "task:tool_call",
                                                  "task:tool_result", "task:metrics", "task:user_input",
                                                  "task:completed", "task:failed"}  # fmt: skip
    for task_id in ids:
        wait_until(lambda t=task_id: (service.get(f"/tasks/{t}/logs")[1] or {}).get("final_result") is not None,
                   what=f"{task_id} to finish")  # fmt: skip
    return ids


def test_show_prints_the_timeline_and_the_final_result(demo_tasks: list[str], env: dict[str, str]) -> None:
    github, sentry = demo_tasks[0], demo_tasks[1]

    shown = tasklogger("show", github, env=env)
    failed = tasklogger("show", sentry, env=env)

    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert out.splitlines()[0] == f"completed  {github}"
    # Stream order over the three files: the webhook flow, then the task, the user's answer, the result.
    steps = ("webhook:received", "webhook:task_created", "agent   created", "tool_call grep", "user_input",
             "tool_call create_pull_request", "final result: completed")  # fmt: skip
    order = [out.index(step) for step in steps]
    assert order == sorted(order)
    assert "↳ error" in out and "1 failed, 7 passed" in out  # the failing test run, paired with its call
    assert "per tool" in out and "create_pull_request" in out
    assert failed.returncode == 0 and "final result: failed" in failed.stdout
    assert "no read access to payments logs" in failed.stdout


def test_show_json_is_the_logs_object(demo_tasks: list[str], env: dict[str, str]) -> None:
    result = tasklogger("show", demo_tasks[2], "--json", env=env)

    assert result.returncode == 0, result.stderr
    logs = json.loads(result.stdout)
    assert set(logs) >= {"metadata", "input", "webhook_flow", "agent_output", "user_inputs", "final_result"}
    assert logs["metadata"]["source"] == "slack" and logs["final_result"]["status"] == "completed"


def test_tasks_lists_filters_and_searches(demo_tasks: list[str], env: dict[str, str]) -> None:
    table = tasklogger("tasks", env=env)
    as_json = tasklogger("tasks", "--json", "--status", "failed", env=env)
    searched = tasklogger("tasks", "--json", "-q", "rotate", env=env)

    assert table.returncode == 0, table.stderr
    assert all(task_id in table.stdout for task_id in demo_tasks)
    failed = json.loads(as_json.stdout)["tasks"]
    assert [t["task_id"] for t in failed] == [demo_tasks[1]]
    assert [t["task_id"] for t in json.loads(searched.stdout)["tasks"]] == [demo_tasks[2]]


def test_tail_follows_a_task_live_until_its_end_and_across_a_restart(
    tmp_path: Path, pub: Publisher, service: ServiceProcess, env: dict[str, str]
) -> None:
    task_id = f"tail-{uuid.uuid4().hex[:8]}"
    expected = [pub.event("task:created", task_id=task_id, data={"source": "cli", "input_message": "tail me"})]
    binary = shutil.which("tasklogger")
    assert binary
    out_path, err_path = tmp_path / "tail.out", tmp_path / "tail.err"

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in out_path.read_text().splitlines()]

    with out_path.open("w") as out, err_path.open("w") as err:
        tail = subprocess.Popen([binary, "tail", task_id, "--json"], env={**os.environ, **env}, stdout=out,
                                stderr=err)  # fmt: skip
    try:
        wait_until(lambda: len(lines()) == 1, what="tail to print the first record")
        expected.append(pub.event("task:output", task_id=task_id, data={"content": "step one"}))
        wait_until(lambda: len(lines()) == 2, what="tail to print the live record")
        service.kill()  # the connection drops; tail resumes after the last id it printed
        service.start()
        expected.append(pub.event("task:output", task_id=task_id, data={"content": "step two"}))
        expected.append(pub.event("task:completed", task_id=task_id, data={"status": "completed", "result": "ok"}))
        assert tail.wait(60) == 0, err_path.read_text()
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()

    printed = lines()
    assert [line["id"] for line in printed[:-1]] == expected
    assert [line["record"]["type"] for line in printed[:-1]] == ["task:created", "task:output", "task:output",
                                                                "task:completed"]  # fmt: skip
    assert printed[-1]["end"]["result"] == "ok"


def test_dead_letters_lists_what_could_not_be_understood(pub: Publisher, service: ServiceProcess,
                                                         env: dict[str, str]) -> None:  # fmt: skip
    bad = pub.raw({"task_id": "x", "data": "{}"})  # no type
    wait_until(lambda: tasklogger("dead-letters", "--json", env=env).stdout.count(bad) > 0, what="the dead letter")

    as_json = json.loads(tasklogger("dead-letters", "--json", "--reason", "missing_type", env=env).stdout)
    table = tasklogger("dead-letters", env=env)

    assert bad in [letter["id"] for letter in as_json["dead_letters"]]
    assert all(letter["reason"] == "missing_type" for letter in as_json["dead_letters"])
    assert table.returncode == 0 and bad in table.stdout and "missing_type" in table.stdout


def test_bad_input_ends_with_one_clear_line(service: ServiceProcess, env: dict[str, str]) -> None:
    unknown = one_error_line(tasklogger("show", "no-such-task", env=env))
    unsafe = one_error_line(tasklogger("show", "..", env=env))
    status = tasklogger("tasks", "--status", "done", env=env)
    nobody = one_error_line(tasklogger("tasks", "--url", f"http://127.0.0.1:{free_port()}"))
    not_yet = one_error_line(tasklogger("tail", "no-such-task", env=env))
    speed = tasklogger("demo", "--speed", "0")

    assert "404" in unknown and "no-such-task" in unknown
    assert "not a valid task id" in unsafe
    assert status.returncode == 2 and "--status must be running, completed or failed" in one_error_line(status)
    assert "cannot reach tasklogger" in nobody
    assert "tail --wait waits for it" in not_yet
    assert speed.returncode == 2 and "--speed must be between 0.1 and 10000" in one_error_line(speed)


def test_a_token_is_sent_when_given_and_asked_for_when_missing(
    cli_redis: RedisProcess, tmp_path_factory: pytest.TempPathFactory, demo_tasks: list[str]
) -> None:
    # Its own consumer group: it reads the whole stream without taking entries from the other service.
    guarded = ServiceProcess(tmp_path_factory.mktemp("cli-auth") / "logs", cli_redis.url,
                             env={"TASKLOGGER_API_TOKEN": TOKEN, "REDIS_CONSUMER_GROUP": "guarded"})  # fmt: skip
    guarded.start()
    try:
        url = f"http://127.0.0.1:{guarded.port}"
        missing = one_error_line(tasklogger("show", demo_tasks[0], "--url", url))
        wait_until(lambda: tasklogger("show", demo_tasks[0], "--url", url, "--token", TOKEN).returncode == 0,
                   what="the guarded service to have the demo task")  # fmt: skip
        via_env = tasklogger(
            "show", demo_tasks[0], "--json", env={"TASKLOGGER_URL": url, "TASKLOGGER_API_TOKEN": TOKEN}
        )
    finally:
        guarded.kill()

    assert "requires an API token" in missing
    assert via_env.returncode == 0 and json.loads(via_env.stdout)["metadata"]["task_id"] == demo_tasks[0]

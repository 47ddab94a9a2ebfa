"""The API token of a real ``tasklogger serve``: every endpoint but the probes needs it (bearer header or the
login cookie), wrong and missing tokens are 401 with ``WWW-Authenticate``, and without a token nothing is asked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.http_helpers import open_sse, request
from tests.support import Publisher, RedisProcess, ServiceProcess, group_drained, running_redis, wait_until

TOKEN = "s3cret-token-for-the-tests-0123"
PROTECTED = [
    "/tasks",
    "/tasks/auth-1",
    "/tasks/auth-1/logs",
    "/tasks/auth-1/logs?file=agent_output",
    "/tasks/auth-1/events",
    "/dead-letters",
    "/metrics",
    "/metrics/prometheus",
    "/openapi.json",
    "/docs",
    "/no-such-route",
]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    with running_redis(tmp_path_factory.mktemp("redis-auth")) as proc:
        yield proc


@pytest.fixture(scope="module")
def secured(redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    logs = tmp_path_factory.mktemp("auth") / "logs"
    proc = ServiceProcess(logs, redis_server.url, env={"TASKLOGGER_API_TOKEN": TOKEN}).start()
    client = redis_server.client()
    pub = Publisher(client)
    pub.event("task:created", task_id="auth-1", data={"source": "github", "input_message": "hello"})
    pub.event("task:completed", task_id="auth-1", data={"result": "ok"})
    wait_until(lambda: group_drained(client), what="the service to drain")
    client.close()
    yield proc
    proc.kill()


@pytest.mark.parametrize("path", PROTECTED)
def test_without_a_token_every_endpoint_but_the_probes_is_401(secured: ServiceProcess, path: str) -> None:
    missing = request(secured.port, path)
    wrong = request(secured.port, path, headers={"Authorization": "Bearer " + TOKEN[:-1] + "X"})
    wrong_cookie = request(secured.port, path, headers={"Cookie": "tasklogger_token=nope"})

    for answer in (missing, wrong, wrong_cookie):
        assert answer.status == 401, (path, answer.status)
        assert answer.headers["www-authenticate"] == "Bearer"
        assert answer.json()["detail"]


@pytest.mark.parametrize("path", [p for p in PROTECTED if not p.endswith(("/events", "/no-such-route"))])
def test_the_bearer_token_opens_every_endpoint(secured: ServiceProcess, path: str) -> None:
    answer = request(secured.port, path, headers={"Authorization": f"Bearer {TOKEN}"})

    assert answer.status == 200, (path, answer.status, answer.body[:200])


def test_probes_need_no_token(secured: ServiceProcess) -> None:
    assert request(secured.port, "/health").status == 200
    assert request(secured.port, "/livez").json() == {"status": "ok"}


def test_login_sets_an_httponly_cookie_that_opens_the_api_and_sse(secured: ServiceProcess) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    wrong = request(secured.port, "/login", method="POST", headers=form, body=b"token=wrong-token-000000000")
    assert wrong.status == 401 and "set-cookie" not in wrong.headers

    body = f"token={TOKEN}&next=%2Ft%2Fauth-1".encode()
    ok = request(secured.port, "/login", method="POST", headers=form, body=body)
    assert ok.status == 303 and ok.headers["location"] == "/t/auth-1"
    cookie = ok.headers["set-cookie"]
    assert cookie.startswith(f"tasklogger_token={TOKEN};")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")

    outside = request(secured.port, "/login", method="POST", headers=form, body=f"token={TOKEN}&next=//evil".encode())
    assert outside.status == 303 and outside.headers["location"] == "/"

    jar = {"Cookie": f"tasklogger_token={TOKEN}"}
    assert request(secured.port, "/tasks/auth-1", headers=jar).json()["task_id"] == "auth-1"
    status, stream = open_sse(secured.port, "/tasks/auth-1/events", headers=jar)
    try:
        assert status == 200
        kinds = []
        while (event := stream.next()) is not None:
            kinds.append(event.event)
        assert kinds == ["record", "record", "end"]
    finally:
        stream.close()

    out = request(secured.port, "/logout", method="POST", headers=jar)
    assert out.status == 303 and out.headers["location"] == "/login"
    assert 'tasklogger_token=""' in out.headers["set-cookie"] or "Max-Age=0" in out.headers["set-cookie"]


def test_without_a_token_setting_nothing_is_asked(redis_url: str, logs_dir: Path) -> None:
    proc = ServiceProcess(logs_dir, redis_url).start()
    try:
        for path in ("/tasks", "/dead-letters", "/metrics", "/openapi.json"):
            assert request(proc.port, path).status == 200, path
        assert request(proc.port, "/tasks/none").status == 404
    finally:
        proc.kill()


def test_a_too_short_token_setting_is_refused_with_one_line(redis_url: str, logs_dir: Path) -> None:
    proc = ServiceProcess(logs_dir, redis_url, env={"TASKLOGGER_API_TOKEN": "short"}).start(wait_healthy=False)
    assert proc.process is not None
    code = proc.process.wait(20)

    assert code == 2
    lines = [line for line in proc.output().splitlines() if line.strip()]
    assert lines[-1].startswith("tasklogger: invalid setting TASKLOGGER_API_TOKEN")

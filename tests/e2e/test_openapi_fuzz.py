"""Schemathesis over the OpenAPI schema of a real ``tasklogger serve`` (real Redis, real files): every operation,
generated valid and invalid inputs, and not one server error; answers conform to the documented status codes and
response models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

from tests.support import Publisher, RedisProcess, ServiceProcess, group_drained, wait_until


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    base: Path = tmp_path_factory.mktemp("fuzz")
    redis_server = RedisProcess(base / "redis").start()
    proc = ServiceProcess(base / "logs", redis_server.url).start()
    client = redis_server.client()
    pub = Publisher(client)
    # Some real data, so that reads of existing tasks and dead letters are exercised too.
    pub.event("task:created", task_id="fuzz-1", data={"source": "github", "input_message": "fuzz me"})
    pub.event("task:output", task_id="fuzz-1", data={"content": "text"})
    pub.event("task:completed", task_id="fuzz-1", data={"result": "ok"})
    pub.raw({"task_id": "fuzz-2"})  # a dead letter
    wait_until(lambda: group_drained(client), what="drained")
    client.close()
    yield proc
    proc.kill()
    redis_server.kill()


@pytest.fixture(scope="module")
def api_schema(service: ServiceProcess) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"http://127.0.0.1:{service.port}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")

#: Operations whose every answer must also match its documented status codes and response model.
DOCUMENTED = {
    "/health", "/livez", "/metrics", "/metrics/prometheus", "/tasks", "/tasks/{task_id}", "/tasks/{task_id}/logs",
    "/tasks/{task_id}/events", "/dead-letters", "/login", "/logout",
}  # fmt: skip


@schema.parametrize()
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case) -> None:
    if case.path == "/tasks/{task_id}/events":
        # A live stream of an existing running task, or ?wait=1, never ends by design: fuzz the rest of it.
        case.query = {**(case.query or {}), "wait": "false"}
        case.path_parameters = {**(case.path_parameters or {}), "task_id": "fuzz-1"}
    checks = [not_a_server_error]
    if case.path in DOCUMENTED:
        checks += [status_code_conformance, response_schema_conformance]
    case.call_and_validate(checks=checks, timeout=10)

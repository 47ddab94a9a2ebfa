"""A real ``tasklogger serve`` over a private redis-server, one per test module that asks for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import Publisher, RedisProcess, ServiceProcess, running_redis, running_service


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    with running_redis(tmp_path_factory.mktemp("redis-api")) as proc:
        yield proc


@pytest.fixture(scope="module")
def service(redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    with running_service(tmp_path_factory.mktemp("api") / "logs", redis_server.url) as proc:
        yield proc


@pytest.fixture(scope="module")
def pub(redis_server: RedisProcess) -> Iterator[Publisher]:
    client = redis_server.client()
    yield Publisher(client)
    client.close()

"""Unit tests of tasklogger.config: settings from the environment (legacy and TASKLOGGER_ names) and CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tasklogger.config import STATE_DIR_NAME, Settings
from tasklogger.errors import ConfigError


def config_error(environ: dict[str, str], **overrides: Any) -> str:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(environ, **overrides)
    return str(info.value)


def test_defaults() -> None:
    s = Settings.from_env({})
    assert {
        "redis_url": None,
        "logs_dir": Path("/data/logs/tasks"),
        "stream": "task_events",
        "group": "task-logger",
        "group_start_id": "0",
        "consumer_name": None,
        "max_batch_size": 1000,
        "max_batch_bytes": 4 * 1024 * 1024,
        "block_ms": 500,
        "claim_idle_ms": 60_000,
        "claim_interval_s": 30.0,
        "max_deliveries": 10,
        "max_entry_bytes": 4 * 1024 * 1024,
        "fsync_threads": 8,
        "sync_mode": "auto",
        "host": "127.0.0.1",
        "port": 8090,
        "embedded_redis_port": 6379,
        "api_token": None,
        "index_path": None,
        "index": True,
        "checkpoint_interval_s": 60.0,
        "signing_key": None,
        "log_level": "INFO",
        "log_format": "console",
    } == s.model_dump()


def test_default_host_is_loopback() -> None:
    assert "127.0.0.1" == Settings.from_env({}).host
    assert "127.0.0.1" == Settings().host


def test_state_dir() -> None:
    assert Path("/srv/logs") / STATE_DIR_NAME == Settings.from_env({"LOGS_DIR": "/srv/logs"}).state_dir
    assert ".tasklogger" == STATE_DIR_NAME


@pytest.mark.parametrize(
    ("variable", "value", "attribute", "expected"),
    [
        ("REDIS_URL", "redis://redis.internal:6380/2", "redis_url", "redis://redis.internal:6380/2"),
        ("LOGS_DIR", "/srv/task-logs", "logs_dir", Path("/srv/task-logs")),
        ("REDIS_STREAM", "agent_events", "stream", "agent_events"),
        ("REDIS_CONSUMER_GROUP", "auditors", "group", "auditors"),
        ("MAX_BATCH_SIZE", "250", "max_batch_size", 250),
        ("PORT", "9000", "port", 9000),
        ("LOG_LEVEL", "DEBUG", "log_level", "DEBUG"),
        ("LOG_LEVEL", "warning", "log_level", "WARNING"),
    ],
)
def test_legacy_variables(variable: str, value: str, attribute: str, expected: Any) -> None:
    assert expected == getattr(Settings.from_env({variable: value}), attribute)


@pytest.mark.parametrize(
    ("variable", "value", "attribute", "expected"),
    [
        ("TASKLOGGER_REDIS_URL", "redis://h:1/0", "redis_url", "redis://h:1/0"),
        ("TASKLOGGER_LOGS_DIR", "/var/tl", "logs_dir", Path("/var/tl")),
        ("TASKLOGGER_STREAM", "s2", "stream", "s2"),
        ("TASKLOGGER_GROUP", "g2", "group", "g2"),
        ("TASKLOGGER_GROUP_START_ID", "$", "group_start_id", "$"),
        ("TASKLOGGER_CONSUMER_NAME", "node-a", "consumer_name", "node-a"),
        ("TASKLOGGER_MAX_BATCH_SIZE", "64", "max_batch_size", 64),
        ("TASKLOGGER_MAX_BATCH_BYTES", "1048576", "max_batch_bytes", 1048576),
        ("TASKLOGGER_BLOCK_MS", "100", "block_ms", 100),
        ("TASKLOGGER_CLAIM_IDLE_MS", "5000", "claim_idle_ms", 5000),
        ("TASKLOGGER_CLAIM_INTERVAL_S", "2.5", "claim_interval_s", 2.5),
        ("TASKLOGGER_MAX_DELIVERIES", "3", "max_deliveries", 3),
        ("TASKLOGGER_MAX_ENTRY_BYTES", "65536", "max_entry_bytes", 65536),
        ("TASKLOGGER_FSYNC_THREADS", "2", "fsync_threads", 2),
        ("TASKLOGGER_HOST", "0.0.0.0", "host", "0.0.0.0"),
        ("TASKLOGGER_PORT", "0", "port", 0),
        ("TASKLOGGER_EMBEDDED_REDIS_PORT", "0", "embedded_redis_port", 0),
        ("TASKLOGGER_LOG_LEVEL", "error", "log_level", "ERROR"),
        ("TASKLOGGER_LOG_FORMAT", "json", "log_format", "json"),
    ],
)
def test_tasklogger_variables(variable: str, value: str, attribute: str, expected: Any) -> None:
    assert expected == getattr(Settings.from_env({variable: value}), attribute)


def test_tasklogger_name_wins_over_the_legacy_name() -> None:
    s = Settings.from_env(
        {"MAX_BATCH_SIZE": "10", "TASKLOGGER_MAX_BATCH_SIZE": "20", "PORT": "1", "TASKLOGGER_PORT": "2"}
    )
    assert (20, 2) == (s.max_batch_size, s.port)


def test_unrelated_variables_are_ignored() -> None:
    s = Settings.from_env({"HOST": "0.0.0.0", "TASKLOGGER_NOPE": "x", "STREAM": "other", "GROUP": "other"})
    assert ("127.0.0.1", "task_events", "task-logger") == (s.host, s.stream, s.group)


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_STREAM", "from-os-environ")
    monkeypatch.delenv("TASKLOGGER_STREAM", raising=False)
    assert "from-os-environ" == Settings.from_env().stream


@pytest.mark.parametrize("variable", ["REDIS_URL", "TASKLOGGER_REDIS_URL"])
def test_empty_redis_url_means_unset(variable: str) -> None:
    assert Settings.from_env({variable: ""}).redis_url is None


def test_empty_redis_url_override_means_unset() -> None:
    assert Settings.from_env({"REDIS_URL": "redis://h:1/0"}, redis_url="").redis_url is None


# ---------------------------------------------------------------------------------------------------- CLI flags


def test_cli_overrides_win() -> None:
    env = {"REDIS_URL": "redis://env:1/0", "LOGS_DIR": "/env", "PORT": "1111", "TASKLOGGER_HOST": "10.0.0.1"}
    s = Settings.from_env(env, redis_url="redis://cli:2/0", logs_dir=Path("/cli"), port=2222, host="0.0.0.0")
    assert ("redis://cli:2/0", Path("/cli"), 2222, "0.0.0.0") == (s.redis_url, s.logs_dir, s.port, s.host)


def test_none_overrides_leave_the_environment_alone() -> None:
    s = Settings.from_env({"PORT": "1111", "LOGS_DIR": "/env"}, port=None, logs_dir=None, host=None)
    assert (1111, Path("/env"), "127.0.0.1") == (s.port, s.logs_dir, s.host)


def test_string_overrides_are_validated_like_the_environment() -> None:
    s = Settings.from_env({}, max_batch_size="42", log_level="debug")
    assert (42, "DEBUG") == (s.max_batch_size, s.log_level)


# ------------------------------------------------------------------------------------------------- invalid values


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"MAX_BATCH_SIZE": "abc"}, "MAX_BATCH_SIZE"),
        ({"MAX_BATCH_SIZE": "0"}, "MAX_BATCH_SIZE"),
        ({"MAX_BATCH_SIZE": "100001"}, "MAX_BATCH_SIZE"),
        ({"MAX_BATCH_SIZE": "1.5"}, "MAX_BATCH_SIZE"),
        ({"MAX_BATCH_SIZE": ""}, "MAX_BATCH_SIZE"),
        ({"TASKLOGGER_MAX_BATCH_SIZE": "-1"}, "TASKLOGGER_MAX_BATCH_SIZE"),
        ({"PORT": "http"}, "PORT"),
        ({"PORT": "65536"}, "PORT"),
        ({"PORT": "-1"}, "PORT"),
        ({"TASKLOGGER_PORT": "70000"}, "TASKLOGGER_PORT"),
        ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL"),
        ({"LOG_LEVEL": "TRACE"}, "LOG_LEVEL"),
        ({"TASKLOGGER_LOG_FORMAT": "xml"}, "TASKLOGGER_LOG_FORMAT"),
        ({"REDIS_STREAM": ""}, "REDIS_STREAM"),
        ({"REDIS_CONSUMER_GROUP": ""}, "REDIS_CONSUMER_GROUP"),
        ({"TASKLOGGER_BLOCK_MS": "0"}, "TASKLOGGER_BLOCK_MS"),
        ({"TASKLOGGER_BLOCK_MS": "60001"}, "TASKLOGGER_BLOCK_MS"),
        ({"TASKLOGGER_CLAIM_INTERVAL_S": "0"}, "TASKLOGGER_CLAIM_INTERVAL_S"),
        ({"TASKLOGGER_MAX_DELIVERIES": "0"}, "TASKLOGGER_MAX_DELIVERIES"),
        ({"TASKLOGGER_MAX_ENTRY_BYTES": "1023"}, "TASKLOGGER_MAX_ENTRY_BYTES"),
        ({"TASKLOGGER_FSYNC_THREADS": "65"}, "TASKLOGGER_FSYNC_THREADS"),
        ({"TASKLOGGER_EMBEDDED_REDIS_PORT": "99999"}, "TASKLOGGER_EMBEDDED_REDIS_PORT"),
        ({"TASKLOGGER_GROUP_START_ID": "latest"}, "TASKLOGGER_GROUP_START_ID"),
    ],
)
def test_invalid_values_raise_config_error_naming_the_variable(environ: dict[str, str], variable: str) -> None:
    message = config_error(environ)
    assert message.startswith(f"invalid setting {variable}: ")


def test_the_message_names_the_variable_that_was_used() -> None:
    message = config_error({"MAX_BATCH_SIZE": "5", "TASKLOGGER_MAX_BATCH_SIZE": "zero"})
    assert message.startswith("invalid setting TASKLOGGER_MAX_BATCH_SIZE: ")


def test_invalid_override_names_the_flag() -> None:
    assert config_error({"PORT": "80"}, port=-5).startswith("invalid setting --port: ")
    assert config_error({}, max_batch_size=0).startswith("invalid setting --max-batch-size: ")


def test_unknown_override_is_an_error() -> None:
    assert config_error({}, no_such_setting=1).startswith("invalid setting --no-such-setting: ")


def test_config_error_is_not_a_pydantic_error() -> None:
    from pydantic import ValidationError

    with pytest.raises(ConfigError) as info:
        Settings.from_env({"PORT": "x"})
    assert not isinstance(info.value, ValidationError)
    assert info.value.__cause__ is None


def test_settings_are_frozen() -> None:
    from pydantic import ValidationError

    s = Settings.from_env({})
    with pytest.raises(ValidationError):
        s.port = 1


# --------------------------------------------------------------------------------------------------- group start


@pytest.mark.parametrize("start", ["0", "$", "1732450000000-0", "1732450000000", "0-0", "1732450000000-15"])
def test_group_start_id_valid(start: str) -> None:
    assert start == Settings.from_env({"TASKLOGGER_GROUP_START_ID": start}).group_start_id


@pytest.mark.parametrize(
    "start",
    [
        "",
        "latest",
        ">",
        "-",
        "+",
        "-1",
        "$$",
        "1732450000000-0-0",
        "1732450000000-x",
        "x-0",
        " 0",
        "1.5",
        "1732450000000-",  # Redis rejects an id with an empty sequence part
        "١٢٣",  # Arabic-Indic digits: str.isdigit() says yes, Redis says no
        "²",
    ],
)
def test_group_start_id_invalid(start: str) -> None:
    assert config_error({"TASKLOGGER_GROUP_START_ID": start}).startswith("invalid setting TASKLOGGER_GROUP_START_ID: ")


def test_short_api_token_is_refused() -> None:
    with pytest.raises(ConfigError, match="TASKLOGGER_API_TOKEN"):
        Settings.from_env({"TASKLOGGER_API_TOKEN": "short"})

"""Settings: one frozen object, read once at start from the environment and the CLI flags.

The deployed environment variables (``REDIS_URL``, ``LOGS_DIR``, ``REDIS_STREAM``, ``REDIS_CONSUMER_GROUP``,
``MAX_BATCH_SIZE``, ``PORT``, ``LOG_LEVEL``) keep their meaning; every other setting is ``TASKLOGGER_<NAME>``.
A CLI flag, when given, wins over the environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError
from .projector import STATE_DIR_NAME as STATE_DIR_NAME  # where the layout is defined; kept importable here

#: The deployed variable names that predate tasklogger's own ``TASKLOGGER_`` prefix.
LEGACY_ENV = {
    "redis_url": "REDIS_URL",
    "logs_dir": "LOGS_DIR",
    "stream": "REDIS_STREAM",
    "group": "REDIS_CONSUMER_GROUP",
    "max_batch_size": "MAX_BATCH_SIZE",
    "port": "PORT",
    "log_level": "LOG_LEVEL",
}


class Settings(BaseModel):
    """Every setting of the service, validated once."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    redis_url: str | None = Field(
        default=None, description="Redis to consume from; unset starts an embedded redis-server on loopback"
    )
    logs_dir: Path = Field(default=Path("/data/logs/tasks"), description="where the task directories live")
    stream: str = Field(default="task_events", min_length=1, description="stream key")
    group: str = Field(default="task-logger", min_length=1, description="consumer group")
    group_start_id: str = Field(
        default="0", description="where a newly created group starts: 0 = the whole stream, $ = only new entries"
    )
    consumer_name: str | None = Field(
        default=None, description="consumer name; default: a stable name stored in the logs directory"
    )
    max_batch_size: int = Field(default=1000, ge=1, le=100_000, description="entries read per batch")
    max_batch_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=64 * 1024,
        description="while recent entries are large, a read asks for fewer of them: about this many bytes per batch",
    )
    block_ms: int = Field(default=500, ge=1, le=60_000, description="how long one XREADGROUP waits for entries")
    claim_idle_ms: int = Field(
        default=60_000, ge=1, description="pending entries of other consumers idle this long are claimed"
    )
    claim_interval_s: float = Field(default=30.0, gt=0, description="how often to look for entries to claim")
    max_deliveries: int = Field(default=10, ge=1, description="an entry delivered more often is dead-lettered")
    max_entry_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, description="larger entries are dead-lettered")
    fsync_threads: int = Field(default=8, ge=1, le=64, description="parallel fsyncs within one batch")
    sync_mode: Literal["auto", "fs", "file"] = Field(
        default="auto",
        description="fs: one syncfs per commit step; file: fsync each file; auto: fs on ext4/xfs/btrfs/f2fs/tmpfs, "
        "else file",
    )
    host: str = Field(default="127.0.0.1", description="HTTP bind address")
    port: int = Field(default=8090, ge=0, le=65535, description="HTTP port")
    embedded_redis_port: int = Field(
        default=6379, ge=0, le=65535, description="port of the embedded redis-server (0: any free port)"
    )
    api_token: str | None = Field(
        default=None,
        min_length=16,
        description="when set, every endpoint but the health probes requires 'Authorization: Bearer <token>'",
    )
    index_path: Path | None = Field(
        default=None, description="the SQLite task index; default: .tasklogger/index.sqlite3 in the logs directory"
    )
    index: bool = Field(default=True, description="keep the task index up to date while consuming")
    checkpoint_interval_s: float = Field(
        default=60.0, gt=0, description="how often the global checkpoint chain records the heads that moved"
    )
    signing_key: Path | None = Field(
        default=None, description="PEM Ed25519 private key that signs digests and checkpoints (optional)"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["console", "json"] = "console"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("redis_url", "api_token", "index_path", "signing_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("group_start_id")
    @classmethod
    def _start_id(cls, value: str) -> str:
        if value != "$" and not _is_stream_id(value):
            raise ValueError("must be 0, $ or a stream entry id like 1732450000000-0")
        return value

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build the settings from ``environ`` (default ``os.environ``); ``overrides`` (CLI flags) win.

        Raises ConfigError naming the variable when a value is invalid.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for name in cls.model_fields:
            for key in (f"TASKLOGGER_{name.upper()}", LEGACY_ENV.get(name)):
                if key and key in env:
                    values[name] = env[key]
                    sources[name] = key
                    break
        for name, value in overrides.items():
            if value is not None:
                values[name] = value
                sources[name] = "--" + name.replace("_", "-")
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = str(first["loc"][0]) if first["loc"] else "?"
            raise ConfigError(f"invalid setting {sources.get(field, field)}: {first['msg']}") from None

    @property
    def state_dir(self) -> Path:
        """The service's reserved directory inside the logs directory."""
        return self.logs_dir / STATE_DIR_NAME

    @property
    def index_file(self) -> Path:
        """Where the SQLite task index lives."""
        return self.index_path or self.state_dir / "index.sqlite3"


def _is_stream_id(value: str) -> bool:
    return re.fullmatch(r"[0-9]+(-[0-9]+)?", value, re.ASCII) is not None

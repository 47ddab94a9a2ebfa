"""The HTTP API (read-only): /health, /tasks/{task_id}/logs and /metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse, Response

from . import __version__, web
from .config import Settings
from .consumer import Consumer
from .errors import UnsafeTaskId
from .reader import TaskDir, TaskNotFound

REDIS_PROBE_TIMEOUT_S = 1.0


@dataclass
class Runtime:
    """What the API reads besides the files: settings, a Redis client and, in the same process, the consumer."""

    settings: Settings
    redis: redis.Redis
    consumer: Consumer | None = None
    started_at: float = field(default_factory=time.monotonic)


def create_app(runtime: Runtime) -> FastAPI:
    """The FastAPI application over ``runtime``."""
    app = FastAPI(title="tasklogger", version=__version__)
    settings = runtime.settings

    @app.get("/health")
    def health() -> JSONResponse:
        """200 while the consumer runs and Redis answers; 503 with the reasons otherwise."""
        status, body = health_report(runtime)
        return JSONResponse(body, status_code=status)

    @app.get("/tasks/{task_id}/logs")
    def task_logs(task_id: str) -> Response:
        """Every file of one task, under the keys existing readers expect."""
        try:
            with TaskDir(settings.logs_dir, task_id) as task:
                return Response(orjson.dumps(task.compat()), media_type="application/json")
        except UnsafeTaskId as exc:
            raise HTTPException(status_code=400, detail=exc.detail) from None
        except TaskNotFound:
            raise HTTPException(status_code=404, detail=f"no task {task_id!r}") from None

    @app.get("/metrics")
    def metrics() -> dict[str, Any]:
        """Queue depth and lag, pending entries, and the consumer's counters (JSON)."""
        return metrics_snapshot(runtime)

    app.include_router(web.router(runtime))
    return app


def health_report(runtime: Runtime) -> tuple[int, dict[str, Any]]:
    """The status code and body of /health: 200 while the consumer runs and Redis answers, else 503."""
    reasons: list[str] = []
    redis_ok = _ping(runtime.redis)
    if not redis_ok:
        reasons.append("redis_unreachable")
    body: dict[str, Any] = {"version": __version__, "redis": "ok" if redis_ok else "unreachable"}
    consumer = runtime.consumer
    if consumer is not None:
        stats = consumer.stats
        body["consumer"] = stats.state
        if not stats.running:
            reasons.append("consumer_stopped")
        elif stats.fault is not None and stats.fault not in reasons:
            reasons.append(stats.fault)
            body["detail"] = stats.fault_detail
    body["status"] = "ok" if not reasons else "unavailable"
    if reasons:
        body["reasons"] = reasons
    return (200 if not reasons else 503), body


def metrics_snapshot(runtime: Runtime) -> dict[str, Any]:
    """The JSON /metrics answers: Redis-side figures (null while Redis is unreachable) and the counters."""
    settings = runtime.settings
    out: dict[str, Any] = {
        "queue_depth": None,
        "queue_lag": None,
        "pending": None,
        "oldest_pending_age_seconds": None,
        "redis": "ok",
    }
    try:
        out["queue_depth"] = runtime.redis.xlen(settings.stream)
        for group in runtime.redis.xinfo_groups(settings.stream):
            if _text(group.get("name")) == settings.group:
                out["queue_lag"] = group.get("lag")
                out["pending"] = group.get("pending")
        if out["pending"]:
            oldest = _text(runtime.redis.xpending(settings.stream, settings.group)["min"])
            out["oldest_pending_age_seconds"] = round(max(0.0, time.time() - int(oldest.split("-")[0]) / 1000), 3)
    except redis.ResponseError:
        out["queue_depth"] = out["queue_depth"] or 0  # no stream yet
    except (redis.ConnectionError, redis.TimeoutError):
        out["redis"] = "unreachable"
    consumer = runtime.consumer
    if consumer is None:
        out["tasks_processed"] = None
        return out
    s = consumer.stats
    now = consumer.clock()
    out.update(
        tasks_processed=s.tasks_processed,
        events_written=s.events_written,
        duplicates_skipped=s.duplicates_skipped,
        dead_letters=s.dead_letters,
        dead_letters_by_reason=dict(s.dead_letters_by_reason),
        batches=s.batches,
        entries_acked=s.entries_acked,
        events_by_type=dict(s.events_by_type),
        errors=dict(s.errors),
        consumer_state=s.state,
        seconds_since_last_batch=None if s.last_batch_at is None else round(now - s.last_batch_at, 3),
        uptime_seconds=round(time.monotonic() - runtime.started_at, 3),
    )
    return out


def _ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
        return False


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value

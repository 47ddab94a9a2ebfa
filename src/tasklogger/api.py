"""The HTTP API (read-only): probes, metrics, and the routes of ``api_tasks`` / ``api_events`` (docs/api.md).

``create_app`` assembles it: the token middleware (``auth``) in front of everything, the task routes over the
index and the files, SSE, dead letters, JSON and Prometheus metrics, then the web page's routes.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from . import __version__, api_events, api_tasks, auth, web
from .api_models import Health, Liveness, MetricsJson
from .audit.http import router as audit_router
from .config import Settings
from .consumer import Consumer
from .index import IndexUnavailable, Reader
from .index_worker import IndexerProcess
from .indexer import Indexer
from .metrics import Metrics

REDIS_PROBE_TIMEOUT_S = 1.0


@dataclass
class Runtime:
    """What the API reads besides the files: settings, a Redis client and, in the same process, the consumer."""

    settings: Settings
    redis: redis.Redis
    consumer: Consumer | None = None
    started_at: float = field(default_factory=time.monotonic)
    #: The index updater of this process (None: the index is maintained elsewhere, or disabled).
    indexer: Indexer | IndexerProcess | None = None
    #: Histograms fed by the consumer's on_commit; created by create_app when not given.
    metrics: Metrics | None = None
    #: The audit state of a task for its summary: (logs_dir, task_id) -> {sealed, digest, sealed_at} or None.
    integrity: api_tasks.Integrity | None = None
    #: Read access to the index (set by create_app).
    reader: Reader | None = None


def create_app(runtime: Runtime) -> FastAPI:
    """The FastAPI application over ``runtime``."""
    app = FastAPI(title="tasklogger", version=__version__)
    settings = runtime.settings

    if runtime.metrics is None:
        runtime.metrics = Metrics()
    prometheus = runtime.metrics
    prometheus.bind(lambda: metrics_snapshot(runtime))
    if settings.api_token is not None:
        app.add_middleware(auth.TokenMiddleware, token=settings.api_token)

    @app.get("/health", response_model=Health, responses={503: {"model": Health}})
    def health() -> JSONResponse:
        """200 while the consumer runs and Redis answers; 503 with the reasons otherwise."""
        status, body = health_report(runtime)
        return JSONResponse(body, status_code=status)

    @app.get("/livez", response_model=Liveness)
    def livez() -> dict[str, str]:
        """200 whenever the process serves HTTP (no Redis, no disk involved): the liveness probe."""
        return {"status": "ok"}

    @app.get(
        "/metrics",
        response_model=MetricsJson,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    def metrics(request: Request) -> Response:
        """JSON by default; Prometheus text with ``Accept: text/plain`` or ``application/openmetrics-text``."""
        accept = request.headers.get("accept", "")
        if "application/openmetrics-text" in accept:
            body, media_type = prometheus.exposition(openmetrics=True)
            return Response(body, media_type=media_type)
        if "text/plain" in accept and "application/json" not in accept:
            body, media_type = prometheus.exposition()
            return Response(body, media_type=media_type)
        return Response(orjson.dumps(metrics_snapshot(runtime)), media_type="application/json")

    @app.get("/metrics/prometheus", responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    def metrics_prometheus() -> Response:
        """Prometheus text exposition format, whatever the Accept header says."""
        body, media_type = prometheus.exposition()
        return Response(body, media_type=media_type)

    reader = runtime.reader = Reader(settings.index_file)

    def integrity(logs_dir: Path, task_id: str) -> dict[str, Any] | None:
        return None if runtime.integrity is None else runtime.integrity(logs_dir, task_id)

    app.include_router(auth.router(settings.api_token))
    app.include_router(api_tasks.router(settings, reader, integrity))
    app.include_router(api_events.router(settings))
    app.include_router(audit_router(runtime))  # GET /tasks/{id}/export
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
    out["index"] = _index_figures(runtime)
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


def _index_figures(runtime: Runtime) -> dict[str, Any]:
    """How far behind the index is: tasks waiting (this process's indexer) and rows in the file."""
    figures: dict[str, Any] = {"enabled": runtime.settings.index, "tasks": None}
    if runtime.indexer is not None:
        pending, lag = runtime.indexer.lag()
        stats = runtime.indexer.stats
        ready = runtime.indexer.ready.is_set()
        figures.update(pending_tasks=pending, lag_seconds=lag, errors=stats.errors, ready=ready)
    if runtime.reader is not None:
        try:
            figures["tasks"] = runtime.reader.lag()[0]
        except (IndexUnavailable, OSError, sqlite3.Error):
            pass
    return figures


def _ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
        return False


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value

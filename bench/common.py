"""Shared by the benchmarks and the crash tester: a private redis-server, the service as a subprocess, machine facts."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import RedisProcess, free_port, group_drained  # noqa: E402

__all__ = ["CpuWindow", "RedisProcess", "Service", "RssSampler", "group_drained", "machine", "free_port"]


class Service:
    """``python -m tasklogger <command>`` with the given logs dir and Redis, output to a log file."""

    def __init__(self, logs_dir: Path, redis_url: str, *, command: str = "consume", env: dict[str, str] | None = None):
        self.logs_dir = logs_dir
        self.env = dict(os.environ, LOGS_DIR=str(logs_dir), REDIS_URL=redis_url, PORT=str(free_port()))
        self.env.update(env or {})
        self.command = command
        self.process: subprocess.Popen[bytes] | None = None
        self.log = logs_dir.parent / "service.log"

    def start(self) -> Service:
        self.logs_dir.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tasklogger", self.command], env=self.env, stdout=out, stderr=out,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                return self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(10)


class RssSampler(threading.Thread):
    """Samples a process's resident set size every ``interval`` seconds; ``peak`` in bytes. Its child processes
    (the writer, the indexer) are sampled too: ``child_peaks`` by module name, ``tree_peak`` for the sum of all
    of them at one instant."""

    #: How often the list of child processes is refreshed: listing them scans every process of the machine,
    #: which sampled every 50 ms took a tenth of a core from the service being measured.
    CHILDREN_EVERY_S = 1.0

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.tree_peak = 0
        self.child_peaks: dict[str, int] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        children: list[psutil.Process] = []
        listed_at = 0.0
        while not self._halt.is_set():
            try:
                rss = self.process.memory_info().rss
                if time.monotonic() - listed_at >= self.CHILDREN_EVERY_S:
                    children, listed_at = self.process.children(), time.monotonic()
            except psutil.Error:
                return
            self.peak = max(self.peak, rss)
            total = rss
            for child in children:
                try:
                    child_rss = child.memory_info().rss
                    name = next((a for a in child.cmdline() if a.startswith("tasklogger.")), child.name())
                except psutil.Error:
                    continue
                total += child_rss
                self.child_peaks[name] = max(self.child_peaks.get(name, 0), child_rss)
            self.tree_peak = max(self.tree_peak, total)
            self._halt.wait(self.interval)

    def stop(self) -> int:
        self._halt.set()
        self.join(2)
        return self.peak

    def report(self) -> str:
        """``peak RSS 93.1 MB (with its child processes 170.2 MB: tasklogger.writer 30.1 MB, ...)``."""
        children = ", ".join(f"{name} {peak / 2**20:.1f} MB" for name, peak in sorted(self.child_peaks.items()))
        tree = f" (with its child processes {self.tree_peak / 2**20:.1f} MB: {children})" if children else ""
        return f"peak RSS {self.peak / 2**20:.1f} MB{tree}"


class CpuWindow:
    """CPU time of the service's busiest thread (the consumer), of the service, of each child process and of
    redis-server between ``start()`` and ``stop()``: how busy each was, as a share of the wall time."""

    def __init__(self, service_pid: int, redis_pid: int | None) -> None:
        self.service = psutil.Process(service_pid)
        self.redis = psutil.Process(redis_pid) if redis_pid else None
        self._start: dict[str, float] = {}
        self._started_at = 0.0
        self.busy: dict[str, float] = {}

    def _sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        try:
            times = self.service.cpu_times()
            out["service"] = times.user + times.system
            threads = {t.id: t.user_time + t.system_time for t in self.service.threads()}
            out.update({f"thread {tid}": cpu for tid, cpu in threads.items()})
            for child in self.service.children():
                name = next((a for a in child.cmdline() if a.startswith("tasklogger.")), child.name())
                times = child.cpu_times()
                out[name.removeprefix("tasklogger.")] = times.user + times.system
            if self.redis is not None:
                times = self.redis.cpu_times()
                out["redis-server"] = times.user + times.system
        except psutil.Error:
            pass
        return out

    def start(self) -> None:
        self._start, self._started_at = self._sample(), time.monotonic()

    def stop(self) -> None:
        end, wall = self._sample(), max(1e-9, time.monotonic() - self._started_at)
        busy = {name: (cpu - self._start.get(name, 0.0)) / wall for name, cpu in end.items()}
        threads = {name: share for name, share in busy.items() if name.startswith("thread ")}
        self.busy = {name: share for name, share in busy.items() if not name.startswith("thread ")}
        if threads:
            self.busy["consumer thread"] = max(threads.values())

    def report(self) -> str:
        """``consumer thread 70 %, service 72 %, writer 60 %, ...``."""
        if not self.busy:
            return "not measured"
        order = ["consumer thread", "service"]
        names = order + sorted(name for name in self.busy if name not in order)
        return ", ".join(f"{name} {self.busy[name] * 100:.0f} %" for name in names if name in self.busy)


def machine(path: Path) -> str:
    """One line: cores, CPU model, memory, the filesystem of ``path``."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    fs = "?"
    best = ""
    for part in psutil.disk_partitions(all=True):
        if str(path).startswith(part.mountpoint) and len(part.mountpoint) > len(best):
            best, fs = part.mountpoint, part.fstype
    mem = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} cores ({model}), {mem:.0f} GiB, {fs} at {best}, Python {platform.python_version()}"


def wait(predicate: object, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False

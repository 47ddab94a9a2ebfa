"""The installed ``tasklogger`` console script, run as a user runs it: version, the single-writer lock, an unusable
logs directory, SIGTERM mid-drain, and the embedded Redis default (no orphan after kill -9, data kept)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

import tasklogger
from tests.faults import ids_on_disk, pending_count
from tests.support import RedisProcess, free_port, gone, wait_until

STREAM = "task_events"
GROUP = "task-logger"
EMBEDDED_URL = re.compile(r"redis://127\.0\.0\.1:(\d+)/0")


def _binary() -> str:
    found = shutil.which("tasklogger")
    assert found, "the tasklogger console script is not installed (pip install -e .)"
    return found


def _env(logs_dir: Path, redis_url: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKLOGGER_")}
    env.update({"LOGS_DIR": str(logs_dir), "PORT": str(free_port()), "TASKLOGGER_BLOCK_MS": "50"})
    if redis_url is None:
        env.pop("REDIS_URL", None)
    else:
        env["REDIS_URL"] = redis_url
    env.update(extra)
    return env


class Cli:
    """One ``tasklogger <command>`` process; stdout and stderr go to files (never a pipe that could fill up)."""

    def __init__(self, tmp: Path, env: dict[str, str], *args: str) -> None:
        self.env = env
        self.args = args
        self.port = int(env["PORT"])
        self.stdout = tmp / f"cli-{self.port}.out"
        self.stderr = tmp / f"cli-{self.port}.err"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Cli:
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                [_binary(), *self.args], env=self.env, stdout=out, stderr=err, stdin=subprocess.DEVNULL
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def status(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0

    def wait_healthy(self, timeout: float = 30) -> Cli:
        def ready() -> bool:
            assert self.process is not None and self.process.poll() is None, self.err()[-3000:]
            return self.status() == 200

        wait_until(ready, timeout=timeout, interval=0.05, what="tasklogger to become healthy")
        return self

    def err(self) -> str:
        return self.stderr.read_text(errors="replace") if self.stderr.exists() else ""

    def stop(self) -> None:
        """Clean-up: SIGKILL if still running, and reap."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait(10)


def _run(env: dict[str, str], *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_binary(), *args], env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def _group(client: redis.Redis) -> dict[str, Any] | None:
    try:
        groups = client.xinfo_groups(STREAM)
    except redis.ResponseError:
        return None
    return next((g for g in groups if g["name"] in (GROUP, GROUP.encode())), None)


def _acked(client: redis.Redis) -> int:
    group = _group(client)
    if group is None:
        return 0
    return int(group["entries-read"] or 0) - int(group["pending"])


def _all_acked(client: redis.Redis) -> bool:
    group = _group(client)
    return group is not None and group["lag"] == 0 and group["pending"] == 0


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr
    return lines[0]


# -- the simple commands ----------------------------------------------------------------------------------------


def test_version() -> None:
    result = _run(dict(os.environ), "version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == tasklogger.__version__
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--no-such-option"], "No such option: --no-such-option"),
        (["no-such-command"], "No such command 'no-such-command'"),
        (["show"], "Missing argument 'TASK'"),
        (["tasks", "--limit", "many"], "Invalid value for '--limit'"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args: list[str], says: str) -> None:
    result = _run(dict(os.environ), *args)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tasklogger: ") and says in lines[0], result.stderr
    assert "Traceback" not in result.stderr and "╭" not in result.stderr


def test_a_second_serve_on_the_same_logs_dir_exits_with_one_line(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    logs_dir = tmp_path / "logs"
    first = Cli(tmp_path, _env(logs_dir, redis_url), "serve").start()
    try:
        first.wait_healthy()
        second = _run(_env(logs_dir, redis_url), "serve", timeout=30)
        assert second.returncode != 0
        line = _one_line(second.stderr)
        assert re.search(r"lock|already", line, re.IGNORECASE), line
        assert str(logs_dir) in line or str(first.pid) in line, line
        assert first.process is not None and first.process.poll() is None  # the first one is untouched
        assert first.status() == 200
    finally:
        first.stop()


@pytest.mark.parametrize("under", ["tmp-file", "/dev/null"])
def test_an_unusable_logs_dir_exits_with_one_line_naming_it(redis_url: str, tmp_path: Path, under: str) -> None:
    if under == "tmp-file":
        parent = tmp_path / "a-regular-file"
        parent.write_text("not a directory")
    else:
        parent = Path(under)
    logs_dir = parent / "logs"
    for redis_setting in (redis_url, None):  # with REDIS_URL, and with the embedded default
        result = _run(_env(logs_dir, redis_setting, TASKLOGGER_EMBEDDED_REDIS_PORT="0"), "serve", timeout=30)
        assert result.returncode != 0
        line = _one_line(result.stderr)
        assert str(logs_dir) in line, line
    assert not logs_dir.exists()


# -- SIGTERM mid-drain ------------------------------------------------------------------------------------------

BACKLOG = 20_000


def _backlog(total: int) -> list[dict[str, str]]:
    """``total`` entries of tasks in progress at once (webhook flow, lifecycle, output), each task in its order."""

    def task(n: int) -> list[dict[str, str]]:
        tid, hook = f"task-{n:05d}", f"hook-{n:05d}"
        text = f"output of {tid} " * 40

        def ev(event_type: str, data: dict[str, Any], *, webhook: bool = False) -> dict[str, str]:
            fields = {"type": event_type, "timestamp": "2026-01-31T12:00:00Z", "data": json.dumps(data)}
            fields.update({"webhook_event_id": hook} if webhook else {"task_id": tid})
            return fields

        out = [
            ev("webhook:received", {"source": "github"}, webhook=True),
            ev("webhook:validated", {"signature_valid": True}, webhook=True),
            ev("webhook:task_created", {"task_id": tid}, webhook=True),
            ev("task:created", {"source": "github", "assigned_agent": "coder", "input_message": "fix"}),
            ev("task:started", {"session_id": "s"}),
        ]
        out += [ev("task:output", {"content": text, "n": i}) for i in range(12)]
        out += [ev("task:user_input", {"content": "yes"}), ev("task:completed", {"status": "completed"})]
        return out

    entries: list[dict[str, str]] = []
    running: list[list[dict[str, str]]] = []
    serial = 0
    while len(entries) < total:
        while len(running) < 16:
            running.append(task(serial))
            serial += 1
        slot = len(entries) * 7 % len(running)
        entries.append(running[slot].pop(0))
        if not running[slot]:
            running.pop(slot)
    return entries


def _publish(client: redis.Redis, entries: list[dict[str, str]]) -> list[str]:
    ids: list[str] = []
    for start in range(0, len(entries), 1000):
        pipe = client.pipeline(transaction=False)
        for fields in entries[start : start + 1000]:
            pipe.xadd(STREAM, fields)  # type: ignore[arg-type]
        ids.extend(i.decode() for i in pipe.execute())
    return ids


@pytest.mark.parametrize("command", ["serve", "consume"])
def test_sigterm_mid_drain_exits_0_quickly_and_a_restart_finishes(tmp_path: Path, command: str) -> None:
    redis_proc = RedisProcess(tmp_path / "redis", appendonly=False).start()
    client = redis_proc.client()
    logs_dir = tmp_path / "logs"
    first = restarted = None
    try:
        published = _publish(client, _backlog(BACKLOG))
        first = Cli(tmp_path, _env(logs_dir, redis_proc.url, MAX_BATCH_SIZE="250"), command).start()
        wait_until(lambda: _acked(client) >= 1000, timeout=60, interval=0.005, what="the drain to start")

        sent_at = time.monotonic()
        first.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        try:
            code: int | None = first.process.wait(10)  # type: ignore[union-attr]
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - sent_at
        first.stop()
        pending_after_stop = pending_count(client)
        acked_at_stop = _acked(client)

        restarted = Cli(tmp_path, _env(logs_dir, redis_proc.url), command).start()
        wait_until(lambda: _all_acked(client), timeout=90, what="the restart to drain the rest")
        restarted.stop()

        # Every event on disk exactly once (chains verified on the way), nothing pending.
        counts = ids_on_disk(logs_dir)
        assert set(counts) == set(published), f"missing {len(set(published) - set(counts))}"
        assert counts == Counter(published), [i for i, n in counts.items() if n > 1][:10]
        assert pending_count(client) == 0
        assert acked_at_stop < len(published), "the backlog drained before SIGTERM: the test proved nothing"

        # The stop itself: graceful, quick, exit status 0, the batch in hand finished and acknowledged.
        stop = f"exit status {code}, {took:.1f}s, {pending_after_stop} pending, {acked_at_stop} acked at stop"
        assert code == 0, f"{stop}\n{first.err()[-2000:]}"
        assert took < 5.0, stop
        assert pending_after_stop == 0, stop
    finally:
        for proc in (first, restarted):
            if proc is not None:
                proc.stop()
        client.close()
        redis_proc.kill()


# -- the embedded Redis -----------------------------------------------------------------------------------------


def _embedded_url(cli: Cli, timeout: float = 30) -> str:
    found: list[str] = []

    def printed() -> bool:
        assert cli.process is not None and cli.process.poll() is None, cli.err()[-3000:]
        match = EMBEDDED_URL.search(cli.err())
        if match:
            found.append(match.group(0))
        return bool(match)

    wait_until(printed, timeout=timeout, interval=0.05, what="the embedded Redis URL on stderr")
    return found[0]


def _redis_children(pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(pid).children(recursive=True) if "server" in " ".join(p.cmdline())]


def test_embedded_redis_dies_with_tasklogger_and_keeps_its_data(tmp_path: Path) -> None:
    logs_dir = tmp_path / "logs"
    env = _env(logs_dir, None, TASKLOGGER_EMBEDDED_REDIS_PORT="0")
    first = Cli(tmp_path, env, "serve").start()
    restarted: Cli | None = None
    children: list[psutil.Process] = []
    try:
        url = _embedded_url(first)
        first.wait_healthy()
        children = _redis_children(first.pid)
        assert len(children) == 1, [c.cmdline() for c in psutil.Process(first.pid).children(recursive=True)]
        assert Path(children[0].cwd()) == logs_dir / ".tasklogger" / "redis"  # redis-server runs in its --dir

        client = redis.Redis.from_url(url, socket_timeout=5)
        ids = [
            client.xadd(STREAM, {"type": "task:created", "task_id": "emb", "data": json.dumps({"source": "cli"})}),
            client.xadd(STREAM, {"type": "task:output", "task_id": "emb", "data": json.dumps({"content": "hello"})}),
        ]
        wait_until(lambda: _all_acked(client), timeout=20, what="the embedded stream to be consumed")
        assert (logs_dir / "emb" / "03-agent-output.jsonl").is_file()
        # Published just before the kill, maybe not consumed yet: Redis must still have them after a restart.
        ids += [
            client.xadd(STREAM, {"type": "task:output", "task_id": "emb", "data": json.dumps({"content": "late"})}),
            client.xadd(STREAM, {"type": "task:completed", "task_id": "emb", "data": json.dumps({"status": "ok"})}),
        ]
        client.close()
        published = [i.decode() for i in ids]

        assert not any(gone(c) for c in children)
        os.kill(first.pid, signal.SIGKILL)
        first.stop()
        wait_until(lambda: all(gone(c) for c in children), timeout=5, what="the embedded redis-server to exit")
        assert (logs_dir / ".tasklogger" / "redis").is_dir()

        restarted = Cli(tmp_path, dict(env, PORT=str(free_port())), "serve").start()
        client = redis.Redis.from_url(_embedded_url(restarted), socket_timeout=5)
        try:
            restarted.wait_healthy()
            entries = client.xrange(STREAM)
            assert [eid.decode() for eid, _ in entries] == published
            wait_until(lambda: _all_acked(client), timeout=20, what="the restart to consume the rest")
        finally:
            client.close()
        counts = ids_on_disk(logs_dir)
        assert counts == Counter(published)
        status = json.loads((logs_dir / "emb" / "04-final-result.json").read_text())["status"]
        assert status == "ok"
        restarted_children = _redis_children(restarted.pid)
        assert len(restarted_children) == 1
        children += restarted_children
    finally:
        for cli in (first, restarted):
            if cli is not None:
                cli.stop()
        for child in children:  # never leave a server behind, even when the test failed
            if not gone(child):
                child.kill()

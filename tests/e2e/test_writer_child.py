"""The writer child of a real ``tasklogger serve``: kill -9 the service and the kernel kills its writer child too
(PR_SET_PDEATHSIG); SIGTERM it and it exits 0 with its writer child stopped, a restarted one included."""

from __future__ import annotations

import signal
from pathlib import Path

import psutil
import pytest
import redis

from tests.faults import ids_on_disk
from tests.support import Publisher, ServiceProcess, gone, group_drained, the_writer, wait_until


def _consumed(service: ServiceProcess, client: redis.Redis, publisher: Publisher, task_id: str) -> None:
    """Publish one event and wait until the service has written it (through its writer child) and acknowledged it."""
    publisher.event("task:output", task_id=task_id, data={"content": "hello"})
    wait_until(lambda: group_drained(client), timeout=20, what=f"the service to consume {task_id}")
    assert ids_on_disk(service.logs_dir)[publisher.ids[-1]] == 1


@pytest.mark.parametrize("busy", [False, True], ids=["idle-writer", "writer-not-reading"])
def test_kill_9_of_the_service_kills_its_writer_child(
    redis_url: str, client: redis.Redis, publisher: Publisher, tmp_path: Path, busy: bool
) -> None:
    service = ServiceProcess(tmp_path / "logs", redis_url).start()
    assert service.process is not None
    writer: psutil.Process | None = None
    try:
        writer = the_writer(psutil.Process(service.process.pid), service.logs_dir)
        _consumed(service, client, publisher, "t-kill")
        if busy:
            # Stopped, it reads no end-of-file on its stdin (as in the middle of a batch): only the kernel's
            # parent-death signal can end it, before it writes anything behind a restarted service's back.
            writer.send_signal(signal.SIGSTOP)
            wait_until(lambda: writer.status() == psutil.STATUS_STOPPED, timeout=5, what="the writer to stop")

        service.kill()  # kill -9
        assert service.process.returncode == -signal.SIGKILL
        wait_until(lambda: gone(writer), timeout=2, what="the writer child to die with the service")
    finally:
        service.kill()
        if writer is not None and not gone(writer):
            writer.kill()  # never leave one behind, even when the test failed


@pytest.mark.parametrize("restarted", [False, True], ids=["first-writer", "restarted-writer"])
def test_sigterm_exits_0_and_stops_the_writer_child(
    redis_url: str, client: redis.Redis, publisher: Publisher, tmp_path: Path, restarted: bool
) -> None:
    service = ServiceProcess(tmp_path / "logs", redis_url).start()
    assert service.process is not None
    parent = psutil.Process(service.process.pid)
    writers: list[psutil.Process] = []
    try:
        writers.append(the_writer(parent, service.logs_dir))
        _consumed(service, client, publisher, "t-1")
        if restarted:
            # Killed between batches: the service starts another writer for the next batch and carries on.
            writers[0].send_signal(signal.SIGKILL)
            wait_until(lambda: gone(writers[0]), timeout=5, what="the killed writer to exit")
            _consumed(service, client, publisher, "t-2")
            writers.append(the_writer(parent, service.logs_dir))
            assert writers[1].pid != writers[0].pid

        code = service.terminate(timeout=10)
        assert code == 0, service.output()[-3000:]
        # The service reaped its writer before it exited: nothing is left, not even a zombie.
        assert not [w.pid for w in writers if w.is_running()]
        assert [i for i, n in ids_on_disk(service.logs_dir).items() if n != 1] == []
    finally:
        service.kill()
        for writer in writers:
            if not gone(writer):
                writer.kill()

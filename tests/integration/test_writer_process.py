"""The writer child process (writer.py) under real signals: SIGKILLed with a batch in flight while the consumer
drains a backlog, SIGKILLed between two commits of a Store and during one, and stopped by ``Store.close()``.

A write is made to fail deterministically: the child is SIGSTOPped, the test waits until a thread of this process
is in a system call on the store's end of the child's pipes (sending a plan, or waiting for an outcome that has not
come), then SIGKILLs it. The stopped child can neither finish that plan nor answer it, so the write in flight always
fails; and mid-drain, the child may have been stopped anywhere in a plan, with part of it on disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import signal
import struct
import termios
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from tasklogger.audit.verify import verify_logs_dir
from tasklogger.errors import DiskError
from tasklogger.projector import project
from tasklogger.store import Store
from tests.faults import ids_on_disk, pending_count, records_on_disk
from tests.integration.test_store import apply_all, event
from tests.support import Publisher, consumer_run, exited, settings_for, the_writer, wait_until, writer_children

FLOW = "02-webhook-flow.jsonl"
AGENT = "03-agent-output.jsonl"
#: (read, write) system call numbers, as /proc/<pid>/task/<tid>/syscall names them.
SYSCALLS = {"x86_64": (0, 1), "aarch64": (63, 64)}


# -- the writer child, seen from /proc ------------------------------------------------------------------------------


def _our_fds_on(pipe: str) -> set[int]:
    """This process's descriptors on ``pipe`` ("pipe:[inode]")."""
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}") == pipe:
                fds.add(int(name))
    return fds


def _unread(fd: int) -> int:
    """Bytes waiting in the pipe read by ``fd``."""
    (count,) = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))
    return int(count)


def store_waits_on(writer: psutil.Process) -> bool:
    """Whether a thread of this process is in a system call on its end of the stopped ``writer``'s pipes: writing
    it a plan, or reading an outcome the child has not sent (its stdout pipe is empty)."""
    read_nr, write_nr = SYSCALLS[platform.machine()]
    to_child = _our_fds_on(os.readlink(f"/proc/{writer.pid}/fd/0"))
    from_child = _our_fds_on(os.readlink(f"/proc/{writer.pid}/fd/1"))
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/syscall") as f:
                fields = f.read().split()
        except OSError:
            continue  # the thread ended
        if len(fields) < 2 or not fields[0].isdigit():
            continue  # running, not in a system call
        nr, fd = int(fields[0]), int(fields[1], 16)
        if nr == write_nr and fd in to_child:
            return True
        if nr == read_nr and fd in from_child and _unread(fd) == 0:
            return True
    return False


@contextlib.contextmanager
def stopped_then_killed(writer: psutil.Process) -> Iterator[None]:
    """``writer`` SIGSTOPped for the block, then SIGKILLed (whatever happened) and dead."""
    writer.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: writer.status() == psutil.STATUS_STOPPED, timeout=5, what="the writer to stop")
        yield
    finally:
        writer.send_signal(signal.SIGKILL)
    wait_until(lambda: exited(writer), timeout=5, what="the killed writer to exit")


def wait_for_a_write_in_flight(writer: psutil.Process) -> None:
    wait_until(lambda: store_waits_on(writer), timeout=10, interval=0.005, what="a write in flight")


def kill_with_a_write_in_flight(writer: psutil.Process) -> None:
    """SIGSTOP ``writer`` wherever it is, wait until the store waits on it, SIGKILL it."""
    with stopped_then_killed(writer):
        wait_for_a_write_in_flight(writer)


@pytest.fixture(autouse=True)
def _linux_proc() -> None:
    if platform.machine() not in SYSCALLS or not os.path.exists("/proc/self/task"):
        pytest.skip("reads system calls from /proc (Linux x86_64 or aarch64)")


# -- the consumer -----------------------------------------------------------------------------------------------------


def publish_tasks(publisher: Publisher, count: int, outputs: int) -> dict[str, tuple[list[str], list[str]]]:
    """``count`` tasks, each a webhook intake then its lifecycle; task id -> (webhook flow ids, agent output ids)."""
    tasks = {}
    for n in range(count):
        task_id, hook = f"t-{n}", f"wh-{n}"
        flow = [
            publisher.event("webhook:received", webhook_event_id=hook, data={"source": "github"}),
            publisher.event("webhook:task_created", webhook_event_id=hook, data={"task_id": task_id}),
        ]
        agent = [publisher.event("task:created", task_id=task_id, data={"source": "github", "input_message": "go"})]
        agent += [
            publisher.event("task:output", task_id=task_id, data={"content": f"{k}:" + "x" * (100 + 37 * k)})
            for k in range(outputs)
        ]
        agent.append(publisher.event("task:completed", task_id=task_id, data={"exit_code": "0"}))
        tasks[task_id] = (flow, agent)
    return tasks


def test_writer_killed_mid_drain_is_a_fault_the_consumer_recovers_from(
    redis_url: str, client: redis.Redis, publisher: Publisher, logs_dir: Path
) -> None:
    me = psutil.Process()
    tasks = publish_tasks(publisher, 40, 25)
    total = len(publisher.ids)
    killed: list[psutil.Process] = []
    with consumer_run(settings_for(redis_url, logs_dir, max_batch_size=40)) as run:
        stats = run.consumer.stats
        for n, share in enumerate((0.2, 0.45, 0.7), start=1):
            wait_until(lambda s=share: stats.entries_acked >= s * total, timeout=30, interval=0.002, what="the drain")
            writer = the_writer(me, logs_dir)
            kill_with_a_write_in_flight(writer)
            killed.append(writer)
            assert not run.drained(), "the backlog drained before the kill: the test proved nothing"
            # The batch in flight fails, counted once under its own kind; the store has reaped the dead child.
            wait_until(lambda k=n: stats.errors.get("writer_process_failed", 0) == k, timeout=10, what="the fault")
            assert not writer.is_running()
        run.wait_drained(timeout=60)
        wait_until(lambda: stats.fault is None, timeout=5, what="the consumer to recover")
        assert stats.errors == {"writer_process_failed": 3}
        assert stats.state == "running"
        assert stats.entries_acked >= total
        assert the_writer(me, logs_dir).pid not in {p.pid for p in killed}  # a new child, started by itself
        run.store.audit.checkpoint("shutdown")  # the heads the store believes in, checked against the disk below

    # Every entry on disk exactly once, in its file, in stream order; nothing pending; chains and seals intact.
    assert ids_on_disk(logs_dir) == Counter(publisher.ids)
    on_disk = records_on_disk(logs_dir)
    for task_id, (flow, agent) in tasks.items():
        assert [b["id"] for b in on_disk[f"{task_id}/{FLOW}"]] == flow
        assert [b["id"] for b in on_disk[f"{task_id}/{AGENT}"]] == agent
        assert json.loads((logs_dir / task_id / "04-final-result.json").read_bytes())["status"] == "completed"
    assert pending_count(client) == 0
    report = verify_logs_dir(logs_dir)
    assert report.ok, [p.text() for p in report.problems]
    assert not writer_children(me, logs_dir)


# -- the store ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def store(logs_dir: Path) -> Iterator[Store]:
    with contextlib.closing(Store(logs_dir, fsync_threads=4)) as opened:
        opened.open()
        yield opened


def agent_ids(logs_dir: Path, task_id: str) -> list[str]:
    return [str(b["id"]) for b in records_on_disk(logs_dir)[f"{task_id}/{AGENT}"]]


def test_writer_killed_between_commits_is_restarted_by_the_next_commit(store: Store, logs_dir: Path) -> None:
    me = psutil.Process()
    apply_all(store, [event("1-0", "task:created", task_id="t1", source="github")])
    first = the_writer(me, logs_dir)
    first.send_signal(signal.SIGKILL)
    wait_until(lambda: exited(first), timeout=5, what="the killed writer to exit")

    # The store sees the child has exited before it sends anything: it starts a new one and the commit succeeds.
    # (Had the next commit begun before the child's exit was complete, the plan would have gone into a pipe
    # nobody reads and the commit would have failed with DiskError, like a kill during a commit, below.)
    batch = [
        event("2-0", "task:output", task_id="t1", content="a"),
        event("3-0", "task:completed", task_id="t1", exit_code="0"),
    ]
    assert apply_all(store, batch) == [True, True]
    assert not first.is_running()  # reaped
    second = the_writer(me, logs_dir)
    assert second.pid != first.pid
    assert agent_ids(logs_dir, "t1") == ["1-0", "2-0", "3-0"]

    # Delivered again (as after a lost XACK), the same events are found on disk: nothing is written twice.
    assert apply_all(store, batch) == [False, False]
    assert agent_ids(logs_dir, "t1") == ["1-0", "2-0", "3-0"]
    assert [r["seq"] for r in records_on_disk(logs_dir)[f"t1/{AGENT}"]] == [1, 2, 3]
    store.audit.checkpoint("shutdown")
    report = verify_logs_dir(logs_dir)
    assert report.ok, [p.text() for p in report.problems]


def test_writer_restarted_from_a_thread_that_ends_outlives_that_thread(store: Store, logs_dir: Path) -> None:
    # The kernel's parent-death signal follows the thread that forked the child: a child restarted by a commit on
    # a short-lived thread must not die with it (every child is forked by the store's own spawning thread).
    me = psutil.Process()
    first = the_writer(me, logs_dir)
    first.send_signal(signal.SIGKILL)
    wait_until(lambda: exited(first), timeout=5, what="the killed writer to exit")

    results: list[list[bool]] = []
    worker = threading.Thread(
        target=lambda: results.append(apply_all(store, [event("1-0", "task:output", task_id="t1", text="a")]))
    )
    worker.start()
    worker.join(30)
    assert results == [[True]]
    second = the_writer(me, logs_dir)
    assert second.pid != first.pid
    with pytest.raises(psutil.TimeoutExpired):
        second.wait(0.5)  # the thread that asked for it has ended; the child lives on
    assert second.status() != psutil.STATUS_ZOMBIE

    assert apply_all(store, [event("2-0", "task:output", task_id="t1", text="b")]) == [True]
    assert the_writer(me, logs_dir).pid == second.pid  # no restart was needed
    assert agent_ids(logs_dir, "t1") == ["1-0", "2-0"]


def test_writer_killed_during_a_commit_fails_it_once_and_the_retry_commits(store: Store, logs_dir: Path) -> None:
    me = psutil.Process()
    apply_all(store, [event("1-0", "task:created", task_id="t1", source="github")])
    first = the_writer(me, logs_dir)
    batch = [
        event("2-0", "task:output", task_id="t1", content="a"),
        event("2-1", "task:output", task_id="t2", content="b"),
        event("3-0", "task:completed", task_id="t1", exit_code="0"),
    ]
    failures: list[BaseException] = []

    def commit() -> None:
        try:
            apply_all(store, batch)
        except BaseException as exc:
            failures.append(exc)

    committer = threading.Thread(target=commit)
    try:
        with stopped_then_killed(first):  # idle, blocked reading its next plan: stopped before it reads this one
            committer.start()
            wait_for_a_write_in_flight(first)
    finally:
        if committer.ident is not None:
            committer.join(15)
    assert not committer.is_alive()
    assert len(failures) == 1 and isinstance(failures[0], DiskError), failures
    assert failures[0].kind == "writer_process_failed"
    assert "the writer process failed" in str(failures[0])
    assert not first.is_running()  # reaped by the failed write
    assert not writer_children(me, logs_dir)  # no new child until the next write
    # The child was stopped before it read the plan: nothing of the batch reached the disk.
    assert agent_ids(logs_dir, "t1") == ["1-0"]
    assert not (logs_dir / "t2").exists()

    # The retry of the same events (the consumer redelivers them) starts a new child and commits each once.
    assert apply_all(store, batch) == [True, True, True]
    assert the_writer(me, logs_dir).pid != first.pid
    assert apply_all(store, batch) == [False, False, False]
    assert agent_ids(logs_dir, "t1") == ["1-0", "2-0", "3-0"]
    assert agent_ids(logs_dir, "t2") == ["2-1"]
    assert ids_on_disk(logs_dir) == Counter(["1-0", "2-0", "2-1", "3-0"])
    store.audit.checkpoint("shutdown")
    report = verify_logs_dir(logs_dir)
    assert report.ok, [p.text() for p in report.problems]


def test_close_leaves_no_writer_child(logs_dir: Path) -> None:
    me = psutil.Process()
    store = Store(logs_dir, fsync_threads=4)
    store.open()
    try:
        first = the_writer(me, logs_dir)  # started by open, before any write
        apply_all(store, [event("1-0", "task:output", task_id="t1", content="a")])
        first.send_signal(signal.SIGKILL)
        wait_until(lambda: exited(first), timeout=5, what="the killed writer to exit")
        apply_all(store, [event("2-0", "task:output", task_id="t1", content="b")])  # a second child
        second = the_writer(me, logs_dir)
        assert second.pid != first.pid
    finally:
        store.close()
    # Both children are reaped (no zombie left): the one that died, and the one close() stopped.
    assert not first.is_running()
    assert not second.is_running()
    assert not writer_children(me, logs_dir)
    assert agent_ids(logs_dir, "t1") == ["1-0", "2-0"]


def test_a_logs_directory_that_is_a_symlink_is_written_through_it(tmp_path: Path) -> None:
    # LOGS_DIR itself may be a symlink to the volume (only what lies inside it is never followed).
    (tmp_path / "volume").mkdir()
    (tmp_path / "logs").symlink_to(tmp_path / "volume")
    with contextlib.closing(Store(tmp_path / "logs")) as store:
        store.open()
        assert apply_all(store, [event("1-0", "task:output", task_id="t1", text="a")]) == [True]
    assert agent_ids(tmp_path / "volume", "t1") == ["1-0"]


def test_a_closed_store_writes_nothing_and_starts_no_writer(logs_dir: Path) -> None:
    store = Store(logs_dir)
    store.open()
    batch = store.begin()
    one = event("1-0", "task:output", task_id="t1", text="a")
    batch.apply(one, project(one, batch.view(one)))
    store.close()
    with pytest.raises(DiskError, match="closed"):  # transient: the entries stay pending, nothing is written
        batch.commit()
    assert not writer_children(psutil.Process(), logs_dir)
    assert not (logs_dir / "t1").exists()


def test_files_read_back_from_disk_are_made_durable_by_the_batch_relying_on_them(store: Store, logs_dir: Path) -> None:
    # After a failure (or a restart) the heads come from the files, which a writer that died may have left
    # written but not synced; a batch that skips their records as stored must make them durable before its ack.
    apply_all(store, [event("1-0", "task:output", task_id="t1", text="a")])
    store.forget()
    batch = store.begin()
    again = event("1-0", "task:output", task_id="t1", text="a")
    assert not batch.apply(again, project(again, batch.view(again)))  # a duplicate: nothing to append
    assert batch.recovered == [(("t1",), AGENT)]
    batch.commit()

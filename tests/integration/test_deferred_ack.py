"""The XACK of a durable batch travels with the next read. A connection reset that takes it with it must not leave
the batch pending: the ids are sent again with the following read, and a clean stop leaves nothing pending.

The reset is real: a TCP proxy between the consumer and a real redis-server closes the connection the first time
the consumer sends a chosen command (the request never reaches Redis).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from tasklogger.consumer import Consumer
from tasklogger.store import Store
from tests.faults import ids_on_disk
from tests.support import ConsumerRun, Publisher, RedisProcess, settings_for, wait_until


class ResettingProxy:
    """Forwards loopback TCP to a Redis port; resets the connection that next sends ``command`` (once): before
    the request reaches Redis, or (``deliver``) after Redis has answered it, dropping the reply."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.listener.getsockname()[1]}/0"
        self.command: bytes | None = None
        self.unless: bytes | None = None
        self.reset_on: list[bytes] = []
        self.deliver = False
        #: Connections (their client sockets) whose next reply is dropped, and the connection reset.
        self._doomed: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, command: bytes, *, unless: bytes | None = None, deliver: bool = False) -> None:
        """Reset the next connection whose request holds ``command`` (and not ``unless``)."""
        with self._lock:
            self.command, self.unless, self.deliver = command, unless, deliver

    @property
    def armed(self) -> bool:
        return self.command is not None

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                if upstream and self._hit(data):
                    if not self.deliver:
                        break
                    with self._lock:
                        self._doomed.add(source)
                if not upstream and sink in self._doomed:
                    break  # Redis has answered: the reply is lost with the connection
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            end.close()

    def _hit(self, data: bytes) -> bool:
        with self._lock:
            if self.command is None or self.command not in data or (self.unless and self.unless in data):
                return False
            self.command = None
            self.reset_on.append(data)
            return True


@contextmanager
def consumer_behind_proxy(
    tmp_path: Path, **overrides: object
) -> Iterator[tuple[ResettingProxy, ConsumerRun, redis.Redis]]:
    """A real redis-server, the proxy in front of it, and a consumer thread connected through the proxy. Yields the
    proxy, the run (``close()`` is a clean stop) and a direct client; everything is stopped at the end."""
    server = RedisProcess(tmp_path / "redis").start()
    proxy = ResettingProxy(server.port)
    try:
        logs_dir = tmp_path / "logs"
        settings = settings_for(proxy.url, logs_dir, **overrides)
        store = Store(logs_dir)
        store.open()
        client = redis.Redis.from_url(proxy.url, socket_timeout=5)
        run = ConsumerRun(settings, client, store, Consumer(settings, client, store, "behind-proxy")).start()
        try:
            yield proxy, run, server.client()
        finally:
            if run.thread is not None and run.thread.is_alive():
                run.close()
    finally:
        proxy.close()
        server.kill()


def pending(client: redis.Redis) -> int:
    return int(client.xpending("task_events", "task-logger")["pending"])


def test_an_ack_lost_with_a_read_ahead_is_sent_again(tmp_path: Path) -> None:
    total = 300
    with consumer_behind_proxy(tmp_path, max_batch_size=50) as (proxy, run, direct):
        consumer = run.consumer
        proxy.arm(b"XACK")  # the first XACK goes with a read-ahead XREADGROUP: that request is lost
        publisher = Publisher(direct)
        for n in range(total):
            publisher.event("task:output", task_id=f"t-{n % 7}", data={"content": f"step {n}"})
        wait_until(lambda: consumer.stats.entries_acked >= total, timeout=30, what="every entry committed")
        wait_until(lambda: pending(direct) == 0, timeout=10, what="nothing pending while running")
        run.close()
        assert proxy.reset_on and b"XREADGROUP" in proxy.reset_on[0], "the reset never happened"
        assert pending(direct) == 0
    on_disk = ids_on_disk(tmp_path / "logs")
    assert len(on_disk) == total and set(on_disk.values()) == {1}  # each entry exactly once


def test_an_ack_lost_before_a_claim_pass_is_sent_again(tmp_path: Path) -> None:
    with consumer_behind_proxy(tmp_path, max_batch_size=50, claim_interval_s=0.05) as (proxy, run, direct):
        consumer = run.consumer
        wait_until(lambda: consumer.stats.state == "running", what="the consumer to start")
        proxy.arm(b"XACK", unless=b"XREADGROUP")  # a stand-alone XACK: the one sent before a claim pass
        publisher = Publisher(direct)
        sent = 0
        while proxy.armed and sent < 2000:
            publisher.event("task:output", task_id="live", data={"content": f"step {sent}"})
            sent += 1
            time.sleep(0.01)
        assert not proxy.armed, "the reset never happened"
        wait_until(lambda: consumer.stats.entries_acked >= sent, timeout=30, what="every entry committed")
        run.close()  # a clean stop: whatever the reset took was acknowledged by a later read or by the stop
        assert pending(direct) == 0


def test_a_read_whose_reply_is_lost_is_read_again_from_pending(tmp_path: Path) -> None:
    """A read's reply lost after Redis delivered its entries (they are pending for this consumer): they are read
    again from the pending list, at once, not claimed back a minute later. While behind, that read is the one sent
    ahead (its reply taken later). Every entry is written once, and nothing is left pending."""
    total = 1500
    with consumer_behind_proxy(tmp_path, max_batch_size=50) as (proxy, run, direct):
        consumer = run.consumer
        publisher = Publisher(direct)
        for n in range(total):
            publisher.event("task:output", task_id=f"t-{n % 7}", data={"content": f"step {n}"})
        wait_until(lambda: consumer.stats.entries_acked >= 100, timeout=30, what="the drain to be under way")
        proxy.arm(b"XREADGROUP", unless=b"BLOCK", deliver=True)
        wait_until(lambda: consumer.stats.entries_acked >= total, timeout=20, what="every entry committed")
        run.close()
        assert proxy.reset_on, "the reset never happened"
        assert pending(direct) == 0
    on_disk = ids_on_disk(tmp_path / "logs")
    assert len(on_disk) == total and set(on_disk.values()) == {1}  # each entry exactly once

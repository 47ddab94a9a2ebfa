"""The consumer loop: XREADGROUP a batch, decode, project, commit to the store, then XACK (and only then).

Start-up resumes this consumer's own pending entries first (read from ``0``), then claims entries that other
consumers left idle (XAUTOCLAIM), then reads new entries (``>``). Every Redis failure sends the loop back to the
pending phase, so entries committed but not yet acknowledged are acknowledged after their (skipped) redelivery.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

from .config import Settings
from .errors import BadEntry, TaskLoggerError, Transient, os_failure
from .projector import project
from .store import Batch, CommitResult, Store
from .wire import Event, decode, entry_size, preserve_fields

log = structlog.get_logger(__name__)

RawEntry = tuple[bytes, dict[bytes, bytes] | None]
BACKOFF_FIRST_S = 0.05
BACKOFF_CAP_S = 2.0
#: Entries asked for by the first read, before their size is known: a backlog of 4 MB entries must not arrive
#: a thousand at a time (the next read is sized from these).
FIRST_READ_COUNT = 10
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, ConnectionError, TimeoutError)


class PoisonEntry(Exception):
    """An entry whose processing failed with an unexpected error; it stays pending until max_deliveries."""


@dataclass
class _ReadAhead:
    """A read sent on a pool connection of its own, whose reply is taken later (``Consumer._request_read``)."""

    connection: Any
    #: Ids acknowledged by the XACK sent ahead of it (sent again if the reply is lost).
    acked: list[bytes]
    count: int


@dataclass
class ConsumerStats:
    """Counters and state of one consumer, read by /health and /metrics (plain ints: reads need no lock)."""

    state: str = "starting"
    fault: str | None = None
    fault_detail: str | None = None
    fault_since: float | None = None
    running: bool = False
    events_written: int = 0
    duplicates_skipped: int = 0
    dead_letters: int = 0
    tasks_processed: int = 0
    batches: int = 0
    entries_acked: int = 0
    last_batch_at: float | None = None
    last_batch_size: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    events_by_type: dict[str, int] = field(default_factory=dict)
    dead_letters_by_reason: dict[str, int] = field(default_factory=dict)


class Consumer:
    """Reads the stream into the store. Run ``run(stop)`` in its own thread; set ``stop`` to end it cleanly."""

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        store: Store,
        consumer_name: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_commit: Callable[[CommitResult], None] | None = None,
    ) -> None:
        self.settings = settings
        self.redis = client
        # XREADGROUP replies are taken as hiredis gives them and turned into entries by _entries (in C, mostly):
        # redis-py's own conversion was a tenth of this thread's time during a drain.
        client.set_response_callback("XREADGROUP", _raw_reply)
        # redis-py retries a command up to 10 times on a connection error by default. An XREADGROUP whose reply was
        # lost after Redis delivered its entries must not be sent again as if nothing happened (those entries would
        # wait, pending, for a claim pass a minute later): the error comes to this loop, which re-reads its pending
        # entries first. (Connections are made on first use: the consumer's client has none yet.)
        client.connection_pool.connection_kwargs["retry"] = Retry(NoBackoff(), 0)
        self.store = store
        self.name = consumer_name
        self.clock = clock
        self.on_commit = on_commit
        self.stats = ConsumerStats()
        self._retry: tuple[list[RawEntry], dict[str, int]] | None = None
        #: The next batch, read and decoded while the previous one was being committed.
        self._prefetched: list[RawEntry] = []
        self._decoded: dict[str, Event | BadEntry] = {}
        #: The read-ahead entries, already applied to a batch while the previous batch was being committed.
        self._prebuilt: tuple[list[RawEntry], Batch, dict[str, int]] | None = None
        #: Last error of entries that failed processing (bounded), named in their dead letter.
        self._failures: dict[str, str] = {}
        self._next_claim = 0.0
        #: Ids of entries that are durable and not acknowledged yet: their XACK goes with the next XREADGROUP.
        self._unacked: list[bytes] = []
        #: A read ahead failed: entries may have been delivered to us unseen.
        self._reread_pending = False
        #: Entries asked for per read: max_batch_size, fewer while recent entries are large (max_batch_bytes).
        self.read_count = min(settings.max_batch_size, FIRST_READ_COUNT)
        #: What the read ahead asked for (a full answer means the consumer is behind).
        self._prefetch_count = self.read_count
        #: While behind: the read after the read-ahead, sent and not taken yet.
        self._ahead: _ReadAhead | None = None

    def __repr__(self) -> str:
        s = self.stats
        return f"<Consumer {self.name} {s.state} written={s.events_written} dead={s.dead_letters} batches={s.batches}>"

    # -- the loop -------------------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; the batch in hand is always finished (committed and acknowledged)."""
        self.stats.running = True
        delay = BACKOFF_FIRST_S
        resume_pending = True
        try:
            while not stop.is_set():
                try:
                    if self._retry is not None:
                        entries, deliveries = self._retry
                        self._process(entries, deliveries)
                    if resume_pending or self._reread_pending:
                        self._reread_pending = False
                        # Everything delivered and not acknowledged, prefetched entries too, is re-read from 0.
                        self._abandon_read()
                        self._drop_prebuilt()
                        self._prefetched, self._decoded = [], {}
                        self._ensure_group()
                        self._drain_own_pending(stop)
                        resume_pending = False
                    if self.clock() >= self._next_claim:
                        self._claim_stale(stop)
                    self._read_new()
                    self._recovered()
                    delay = BACKOFF_FIRST_S
                    continue
                except REDIS_ERRORS as exc:
                    self._fault("redis_unreachable", exc)
                    resume_pending = True
                except redis.ResponseError as exc:
                    kind = "redis_nogroup" if "NOGROUP" in str(exc) else "redis_error"
                    self._fault(kind, exc)
                    resume_pending = True
                except Transient as exc:
                    self._fault(exc.kind, exc)
                except PoisonEntry as exc:
                    self._fault("poison_entry", exc)
                    resume_pending = True  # the culprit is redelivered with a higher count
                except Exception as exc:  # a defect must not kill the loop: back off, redeliver, count it
                    log.exception("unexpected error in the consumer loop")
                    self._fault("internal_error", exc)
                    self._retry = None
                    resume_pending = True
                stop.wait(delay)
                delay = min(delay * 2, BACKOFF_CAP_S)
            self._finish_prefetched()
        finally:
            self._abandon_read()
            self._flush_acks()
            self._drop_prebuilt()
            self.stats.running = False
            self.stats.state = "stopped"

    def _finish_prefetched(self) -> None:
        """At a stop, commit the batches read ahead too, so a clean stop leaves nothing pending."""
        if self._retry is not None:
            return
        entries, self._prefetched = self._prefetched, []
        try:
            if entries:
                self._process(entries, {})
            if self._ahead is not None:
                entries = self._collect_read()
                if entries:
                    self._process(entries, {})
        except Exception as exc:  # it stays pending and is redelivered at the next start
            log.warning("left the read-ahead batch pending at stop", error=repr(exc), size=len(entries))

    def _ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(
                self.settings.stream, self.settings.group, id=self.settings.group_start_id, mkstream=True
            )
            log.info("created consumer group", stream=self.settings.stream, group=self.settings.group)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _drain_own_pending(self, stop: threading.Event) -> None:
        """Re-process entries delivered to this consumer but never acknowledged (a crash, a Redis outage)."""
        start: bytes | str = "0"
        while not stop.is_set():
            reply = self._xreadgroup(start, count=self.read_count)
            entries = _entries(reply)
            if not entries:
                return
            self._process(entries, self._delivery_counts(entries))
            start = entries[-1][0]

    def _claim_stale(self, stop: threading.Event) -> None:
        """Take over entries other consumers left idle for longer than claim_idle_ms."""
        self._next_claim = self.clock() + self.settings.claim_interval_s
        cursor: bytes | str = "0-0"
        while not stop.is_set():
            self._flush_acks()  # our durable entries are never claimed back as stale; one XACK per claimed batch
            reply = self.redis.xautoclaim(
                self.settings.stream,
                self.settings.group,
                self.name,
                min_idle_time=self.settings.claim_idle_ms,
                start_id=cursor,
                count=self.read_count,
            )
            cursor, claimed = reply[0], [(eid, fields) for eid, fields in reply[1] if eid is not None]
            deleted = reply[2] if len(reply) > 2 else []
            gone: list[RawEntry] = [(eid, None) for eid in deleted]
            if claimed or gone:
                log.info("claimed stale entries", count=len(claimed), deleted=len(gone))
                counts = self._delivery_counts(claimed) if claimed else {}
                self._process(claimed + gone, counts)
            if cursor in (b"0-0", "0-0"):
                return

    def _read_new(self) -> None:
        entries, self._prefetched = self._prefetched, []
        if not entries and self._ahead is not None:
            entries = self._collect_read()
        if not entries:
            reply = self._xreadgroup(">", count=self.read_count, block=self.settings.block_ms)
            entries = _entries(reply)
        if entries:
            self._process(entries, {}, prefetch=True)

    def _prefetch(self) -> None:
        """While a batch is being made durable: read (without waiting) and decode the next one. While behind,
        the read after it is then sent at once (sized from these entries), and its reply taken at the next
        prefetch."""
        try:
            if self._ahead is not None:
                entries = self._collect_read()
            else:
                self._prefetch_count = self.read_count
                entries = _entries(self._xreadgroup(">", count=self._prefetch_count))
        except (*REDIS_ERRORS, redis.ResponseError) as exc:
            # The loop meets the outage (or the error reply: NOGROUP, OOM, ...) on its next read; the batch in hand
            # is finished as usual. The server may have delivered entries whose reply was lost: they are pending
            # for us, so the loop re-reads its pending entries first.
            log.warning("reading ahead failed; pending entries are read again", error=repr(exc))
            self._reread_pending = True
            return
        self._prefetched = entries
        size = 0
        for raw_id, fields in entries:
            entry_id = _text(raw_id)
            try:
                event = decode(entry_id, fields, max_entry_bytes=self.settings.max_entry_bytes)
                self._decoded[entry_id] = event
                size += event.size
            except BadEntry as exc:
                self._decoded[entry_id] = exc
                size += entry_size(fields)
            except Exception:  # decoded again in its own batch, where a defect is isolated properly
                log.exception("decoding ahead failed", id=entry_id)
        if len(entries) < self._prefetch_count:
            return
        self._size_reads(size, len(entries))
        try:
            self._request_read()
        except (*REDIS_ERRORS, redis.ResponseError):
            self._reread_pending = True  # a request half sent may have delivered entries: read pending first

    def _xreadgroup(self, start: bytes | str, *, count: int, block: int | None = None) -> Any:
        """XREADGROUP from ``start``; the acknowledgement of the batches made durable since the last read goes in
        the same round trip, ahead of it (so a read of pending entries no longer sees them).

        A lost XACK is harmless: the entries are redelivered, found on disk and skipped."""
        streams: dict[Any, Any] = {self.settings.stream: start}
        if not self._unacked:
            return self.redis.xreadgroup(self.settings.group, self.name, streams, count=count, block=block)
        ids, self._unacked = self._unacked, []
        pipe = self.redis.pipeline(transaction=False)
        pipe.xack(self.settings.stream, self.settings.group, *ids)
        pipe.xreadgroup(self.settings.group, self.name, streams, count=count, block=block)
        try:
            return pipe.execute()[1]
        except BaseException:
            self._unacked[:0] = ids  # sent again with the next read (XACK is idempotent)
            raise

    def _request_read(self) -> None:
        """Send the next read now, on a pool connection of its own, and take its reply at the next prefetch: Redis
        prepares that batch while this thread builds the current one (waiting for the reply of a read sent only
        when it was needed was a sixth of this thread's time in a drain). The durable batches' XACK goes ahead of
        it, as in ``_xreadgroup``."""
        stream, group = self.settings.stream, self.settings.group
        pool = self.redis.connection_pool
        connection: Any = pool.get_connection()  # redis-py leaves the Connection methods untyped
        ids, self._unacked = self._unacked, []  # only once a connection is in hand: a failure above keeps them
        commands: list[tuple[Any, ...]] = [("XACK", stream, group, *ids)] if ids else []
        commands.append(("XREADGROUP", "GROUP", group, self.name, "COUNT", self.read_count, "STREAMS", stream, ">"))
        try:
            connection.send_packed_command(connection.pack_commands(commands))
        except BaseException:
            connection.disconnect()
            pool.release(connection)
            self._unacked[:0] = ids
            raise
        self._ahead = _ReadAhead(connection, ids, self.read_count)

    def _collect_read(self) -> list[RawEntry]:
        """The entries of the read ``_request_read`` sent. If its reply is lost, Redis may have delivered them
        anyway: the loop then re-reads its pending entries, and the XACK goes again with the next read."""
        ahead, self._ahead = self._ahead, None
        assert ahead is not None
        pool = self.redis.connection_pool
        try:
            if ahead.acked:
                ahead.connection.read_response()
            reply = ahead.connection.read_response()
        except BaseException:
            ahead.connection.disconnect()  # a reply half read, or the XACK's error ahead of the read's: start afresh
            self._unacked[:0] = ahead.acked
            self._reread_pending = True
            raise
        finally:
            pool.release(ahead.connection)
        self._prefetch_count = ahead.count
        return _entries(reply)

    def _abandon_read(self) -> None:
        """Drop a read sent and not taken: before re-reading the pending entries (which include whatever it
        delivered), and at the end."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return
        ahead.connection.disconnect()
        self.redis.connection_pool.release(ahead.connection)
        self._unacked[:0] = ahead.acked

    def _flush_acks(self) -> None:
        """Acknowledge now what is durable and not acknowledged yet (before a claim, and at a stop).

        If Redis does not take it, the ids are kept for the next read; at a stop the entries stay pending and
        are skipped as already written when they are delivered again."""
        if not self._unacked:
            return
        ids, self._unacked = self._unacked, []
        try:
            self.redis.xack(self.settings.stream, self.settings.group, *ids)
        except (*REDIS_ERRORS, redis.ResponseError) as exc:
            self._unacked[:0] = ids
            log.warning("acknowledgement not taken; sent again with the next read", error=repr(exc), count=len(ids))

    def _delivery_counts(self, entries: list[RawEntry]) -> dict[str, int]:
        rows = self.redis.xpending_range(
            self.settings.stream,
            self.settings.group,
            min=entries[0][0],
            max=entries[-1][0],
            count=len(entries),
            consumername=self.name,
        )
        return {_text(row["message_id"]): int(row["times_delivered"]) for row in rows}  # type: ignore[arg-type]

    # -- one batch --------------------------------------------------------------------------------------------------

    def _process(self, entries: list[RawEntry], deliveries: dict[str, int], *, prefetch: bool = False) -> None:
        """Commit ``entries`` to the store, then acknowledge them. On a disk failure keep them for a retry.

        If the batch fails for a reason that is neither the disk nor Redis (a defect triggered by one entry), the
        entries are committed one by one so that only the culprit stays pending; it is redelivered with a growing
        delivery count and dead-lettered once that passes max_deliveries, and the rest of the stream flows.
        """
        self._retry = (entries, deliveries)
        try:
            self._commit(entries, deliveries, prefetch=prefetch)
        except (Transient, *REDIS_ERRORS, redis.ResponseError):
            raise
        except Exception as exc:
            self._retry = None
            if len(entries) == 1:
                self._note_poison(entries[0][0], exc)
                raise PoisonEntry(f"entry {_text(entries[0][0])} failed: {exc!r}") from exc
            log.error("batch failed; retrying its entries one by one", error=repr(exc), size=len(entries))
            failed = 0
            for entry in entries:
                try:
                    self._commit([entry], deliveries)
                except (Transient, *REDIS_ERRORS, redis.ResponseError):
                    raise
                except Exception as one:
                    self._note_poison(entry[0], one)
                    failed += 1
            if failed:
                raise PoisonEntry(f"{failed} entries failed to process and stay pending") from exc
        self._retry = None

    def _too_many_deliveries(self, entry_id: str, count: int) -> BadEntry:
        last_error = self._failures.get(entry_id)
        if last_error is None:
            return BadEntry("too_many_deliveries", f"delivered {count} times")
        return BadEntry("processing_error", f"delivered {count} times; last error: {last_error}")

    def _note_poison(self, raw_id: bytes, exc: Exception) -> None:
        entry_id = _text(raw_id)
        log.error("entry failed to process; it stays pending", id=entry_id, error=repr(exc))
        self._failures[entry_id] = repr(exc)[:500]
        while len(self._failures) > 1000:
            self._failures.pop(next(iter(self._failures)))

    def _decode(self, entry_id: str, fields: dict[bytes, bytes] | None) -> Event:
        decoded = self._decoded.pop(entry_id, None)
        if decoded is None:
            return decode(entry_id, fields, max_entry_bytes=self.settings.max_entry_bytes)
        if isinstance(decoded, BadEntry):
            raise decoded
        return decoded

    def _commit(self, entries: list[RawEntry], deliveries: dict[str, int], *, prefetch: bool = False) -> None:
        batch, reasons = self._take_prebuilt(entries) or self._build(entries, deliveries)
        if prefetch and not self._prefetched:
            # The writer process writes this batch while this thread reads and decodes the next one and builds it on
            # top of this one's heads (it is only written once this one is durable).
            batch.seal()
            try:
                batch.send()
            except BaseException:
                batch.finish(ok=False)
                raise
            ok = False
            try:
                self._prefetch()
                self._prebuild()
            finally:
                try:
                    result = batch.receive()  # never leave a commit running behind the loop's back
                    ok = True
                finally:
                    batch.finish(ok=ok)
                    if not ok:
                        self._drop_prebuilt()  # built on heads that are not on disk: rebuilt from its entries
        else:
            result = batch.commit()
        result.entries = len(entries)
        # Behind: the next batch, read while this one was written, is already full.
        result.backlog = len(self._prefetched) >= self._prefetch_count
        # Durable from here on: safe to acknowledge, with the next read (one round trip fewer per batch).
        self._unacked.extend(eid for eid, _ in entries)
        for eid, _ in entries:
            self._failures.pop(_text(eid), None)
        self._count(result, len(entries), reasons)
        if self.on_commit is not None:
            self.on_commit(result)

    def _build(self, entries: list[RawEntry], deliveries: dict[str, int]) -> tuple[Batch, dict[str, int]]:
        """Decode, project and apply ``entries`` to a new batch (dead letters included); nothing is written yet."""
        batch = self.store.begin()
        reasons: dict[str, int] = {}
        size = 0
        try:
            for raw_id, fields in entries:
                entry_id = _text(raw_id)
                count = deliveries.get(entry_id, 1)
                try:
                    if batch.is_dead_lettered(entry_id):
                        batch.result.duplicates += 1  # a replay of an entry already given up on
                        continue
                    event = self._decode(entry_id, fields)
                    size += event.size
                    if count > self.settings.max_deliveries and not _stored(batch, event):
                        raise self._too_many_deliveries(entry_id, count)
                    batch.apply(event, project(event, batch.view(event)))
                except BadEntry as exc:
                    size += entry_size(fields)
                    if batch.dead_letter(self._dead_letter_body(entry_id, fields, exc, count)):
                        reasons[exc.reason] = reasons.get(exc.reason, 0) + 1
        except OSError as exc:
            batch.abort()
            raise os_failure(exc, "reading the logs directory failed") from exc
        except BaseException:
            batch.abort()
            raise
        self._size_reads(size, len(entries))
        return batch, reasons

    def _size_reads(self, size: int, count: int) -> None:
        """Ask the next reads for as many entries as fit in max_batch_bytes at the size of these (at most
        max_batch_size): a run of large entries is read a few at a time, so memory stays bounded."""
        if count:
            mean = max(1, size // count)
            self.read_count = max(1, min(self.settings.max_batch_size, self.settings.max_batch_bytes // mean))

    def _prebuild(self) -> None:
        """Build the read-ahead batch now; any failure leaves it to be built (and handled) in its own turn."""
        if not self._prefetched:
            return
        entries = self._prefetched
        try:
            batch, reasons = self._build(entries, {})
        except Exception as exc:
            log.debug("building ahead failed; the batch is built again in its turn", error=repr(exc))
            return
        self._prebuilt = (entries, batch, reasons)

    def _take_prebuilt(self, entries: list[RawEntry]) -> tuple[Batch, dict[str, int]] | None:
        """The batch built ahead for exactly these entries, if any; a batch built ahead for others is dropped."""
        if self._prebuilt is None:
            return None
        if self._prebuilt[0] is entries:
            _, batch, reasons = self._prebuilt
            self._prebuilt = None
            return batch, reasons
        self._drop_prebuilt()
        return None

    def _drop_prebuilt(self) -> None:
        if self._prebuilt is not None:
            self._prebuilt[1].abort()
            self._prebuilt = None

    def _dead_letter_body(
        self, entry_id: str, fields: dict[bytes, bytes] | None, exc: BadEntry, deliveries: int
    ) -> dict[str, Any]:
        log.warning("dead-lettered entry", id=entry_id, reason=exc.reason, detail=exc.detail)
        return {
            "id": entry_id,
            "reason": exc.reason,
            "detail": exc.detail,
            "deliveries": deliveries,
            "stream": self.settings.stream,
            "dead_lettered_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "fields": preserve_fields(fields),
        }

    def _count(self, result: CommitResult, size: int, reasons: dict[str, int]) -> None:
        s = self.stats
        s.events_written += result.written
        s.duplicates_skipped += result.duplicates
        s.dead_letters += result.dead_letters
        s.tasks_processed += len(result.finished_tasks)
        s.batches += 1
        s.entries_acked += size
        s.last_batch_at = self.clock()
        s.last_batch_size = size
        for name, n in result.by_type.items():
            s.events_by_type[name] = s.events_by_type.get(name, 0) + n
        for reason, n in reasons.items():
            s.dead_letters_by_reason[reason] = s.dead_letters_by_reason.get(reason, 0) + n

    # -- health ---------------------------------------------------------------------------------------------------

    def _fault(self, kind: str, exc: BaseException) -> None:
        s = self.stats
        s.errors[kind] = s.errors.get(kind, 0) + 1
        if s.fault != kind:  # say it once, not once per retry
            log.error("consumer paused", reason=kind, error=str(exc))
            s.fault, s.fault_since = kind, self.clock()
        s.fault_detail = str(exc)
        s.state = kind

    def _recovered(self) -> None:
        s = self.stats
        if s.fault is not None:
            log.info("consumer recovered", reason=s.fault, after_s=round(self.clock() - (s.fault_since or 0), 2))
        s.fault = s.fault_detail = s.fault_since = None
        s.state = "running"


def _stored(batch: Batch, event: Event) -> bool:
    """Whether ``event`` is already on disk; False when even looking fails (the entry is then given up on)."""
    try:
        return batch.is_stored(project(event, batch.view(event)))
    except (OSError, TaskLoggerError):
        return False


def _raw_reply(response: Any, **options: Any) -> Any:
    return response


def _entries(reply: Any) -> list[RawEntry]:
    """The (id, fields) of an XREADGROUP reply: ``{stream: [[id, [k, v, ...]], ...]}`` (RESP3) or
    ``[[stream, [[id, [k, v, ...]], ...]]]`` (RESP2); fields are None for an entry deleted while pending."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else [stream[1] for stream in reply]
    entries: list[RawEntry] = []
    for stream_entries in streams:
        for entry_id, flat in stream_entries:
            if flat is None:
                entries.append((entry_id, None))
            else:
                pairs = iter(flat)
                entries.append((entry_id, dict(zip(pairs, pairs, strict=True))))
    return entries


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

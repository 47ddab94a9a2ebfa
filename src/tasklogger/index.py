"""The task index: one SQLite file (WAL) listing every task, with full-text search (FTS5).

It is derived data. Every row is rebuilt from the task directories (``summary.scan``), so a missing, corrupt or
outdated index file is moved aside and rebuilt, and deleting it loses nothing. One writer (the indexer thread of
the consuming process, or ``tasklogger reindex``) updates it; API requests read it through their own connections.

Full-text search uses a contentless FTS5 table: the text is tokenised but not stored a second time. A task's
text arrives in pieces as its files grow, so each piece is its own FTS row whose rowid is
``task id << CHUNK_BITS | piece number``; a match maps back to its task with a shift, no join table.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog

from .errors import UnsafeTaskId
from .reader import TaskDir, TaskNotFound
from .summary import Shrunk, TaskRow, iso, scan

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 1
CHUNK_BITS = 20
MAX_CHUNK = (1 << CHUNK_BITS) - 1

#: sort parameter -> (SQL expression of the key, descending, index on it). NULLs sort as the smallest value.
SORTS: dict[str, tuple[str, bool, str]] = {}
for _name, _column, _index in (
    ("created_at", "created_ts", "tasks_created"),
    ("updated_at", "updated_ts", "tasks_updated"),
    ("cost_usd", "cost_usd", "tasks_cost"),
    ("duration_seconds", "duration_seconds", "tasks_duration"),
):
    SORTS[_name] = (f"ifnull({_column}, -1e308)", False, _index)
    SORTS["-" + _name] = (f"ifnull({_column}, -1e308)", True, _index)
#: From this many matching pieces of text on, a search walks the tasks in sort order and stops at the page's
#: end, instead of sorting every match (measured: 100,000 matches cost 60 ms sorted, 19 ms walked).
WALK_FROM_MATCHES = 5000
DEFAULT_SORT = "-created_at"
STATUSES = ("running", "completed", "failed")

_SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: FTS pieces of a deleted row must match nothing
    task_id TEXT NOT NULL UNIQUE,
    source TEXT, agent_type TEXT, user_id TEXT, machine_id TEXT,
    status TEXT NOT NULL,
    created_ts REAL, updated_ts REAL, finished_ts REAL,
    duration_seconds REAL, cost_usd REAL, input_tokens INTEGER, output_tokens INTEGER, exit_code INTEGER,
    error TEXT, message TEXT,
    webhook_flow INTEGER NOT NULL, agent_output INTEGER NOT NULL, user_inputs INTEGER NOT NULL,
    first_entry_id TEXT, last_entry_id TEXT,
    chunks INTEGER NOT NULL DEFAULT 0,
    state BLOB NOT NULL
);
CREATE INDEX tasks_created ON tasks ({SORTS["created_at"][0]}, id);  -- the names are SORTS' index names
CREATE INDEX tasks_updated ON tasks ({SORTS["updated_at"][0]}, id);
CREATE INDEX tasks_cost ON tasks ({SORTS["cost_usd"][0]}, id);
CREATE INDEX tasks_duration ON tasks ({SORTS["duration_seconds"][0]}, id);
CREATE INDEX tasks_source ON tasks (source);
CREATE INDEX tasks_user ON tasks (user_id);
CREATE INDEX tasks_agent ON tasks (agent_type);
CREATE INDEX tasks_status ON tasks (status) WHERE status = 'running';
CREATE VIRTUAL TABLE fts USING fts5 (body, content='', tokenize='unicode61 remove_diacritics 2', prefix='2 3');
INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');
"""

_ROW_COLUMNS = (
    "task_id source agent_type user_id machine_id status created_ts updated_ts finished_ts duration_seconds "
    "cost_usd input_tokens output_tokens exit_code error message webhook_flow agent_output user_inputs "
    "first_entry_id last_entry_id"
).split()
_SELECT = "SELECT id, chunks, state, " + ", ".join(_ROW_COLUMNS) + " FROM tasks"


class IndexUnavailable(Exception):
    """The index cannot answer (disabled, not built yet, or being rebuilt)."""


class BadQuery(ValueError):
    """A /tasks query parameter that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Query:
    """A task list query (see GET /tasks)."""

    source: str | None = None
    status: str | None = None
    agent: str | None = None
    user: str | None = None
    since: float | None = None
    until: float | None = None
    q: str | None = None
    sort: str = DEFAULT_SORT
    limit: int = 50
    cursor: str | None = None


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection in WAL mode; readers get ``query_only`` so a bug can never write."""
    conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 10000")
    if readonly:
        conn.execute("PRAGMA query_only = 1")
    else:
        conn.execute("PRAGMA journal_mode = WAL")
        # Derived data: a crash may lose the last transactions, which the next catch-up scan redoes.
        conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def open_writer(path: Path) -> tuple[sqlite3.Connection, bool]:
    """Open (or create) the index for writing. Returns (connection, fresh).

    An index that is not a database, has another schema version or fails its quick check is logged, moved
    aside (``*.corrupt-<time>``) and replaced by an empty one; ``fresh`` tells the caller to rebuild it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.exists()
    try:
        conn = connect(path)
        version = _schema_version(conn)
        if version is None and not existed:
            conn.executescript(_SCHEMA)
            return conn, True
        if version != SCHEMA_VERSION:
            conn.close()
            raise sqlite3.DatabaseError(f"schema version {version!r}, expected {SCHEMA_VERSION}")
        return conn, False
    except sqlite3.DatabaseError as exc:
        moved = move_aside(path)
        log.error("task index unusable, moved aside and rebuilt from the files", path=str(path), error=str(exc),
                  moved_to=str(moved))  # fmt: skip
        conn = connect(path)
        conn.executescript(_SCHEMA)
        return conn, True


def _schema_version(conn: sqlite3.Connection) -> int | None:
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return None
    if "meta" not in tables or "tasks" not in tables:
        return -1
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row and str(row[0]).isdigit() else -1


def move_aside(path: Path) -> Path:
    """Rename the index file and its WAL/SHM files out of the way (kept for inspection, never deleted)."""
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}{suffix}", f"{target}{suffix}")
    return target


# -- writing ----------------------------------------------------------------------------------------------------


def ingest(conn: sqlite3.Connection, logs_dir: Path, task_ids: Iterable[str]) -> int:
    """Bring the rows of ``task_ids`` up to date with their files, in one transaction. Returns records read."""
    records = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        for task_id in task_ids:
            records += _ingest_one(conn, logs_dir, task_id)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return records


def _ingest_one(conn: sqlite3.Connection, logs_dir: Path, task_id: str) -> int:
    found = conn.execute(_SELECT + " WHERE task_id = ?", (task_id,)).fetchone()
    try:
        with TaskDir(logs_dir, task_id) as task:
            row, rowid, chunks = (_row_of(found), found[0], found[1]) if found else (TaskRow(task_id), None, 0)
            before = row.total
            try:
                texts = scan(task, row)
            except Shrunk:
                # A cut line: the task is read again, under a new rowid so its old FTS pieces match nothing.
                conn.execute("DELETE FROM tasks WHERE task_id = ?", (task_id,))
                row, rowid, chunks, before = TaskRow(task_id), None, 0, 0
                texts = scan(task, row)
    except (TaskNotFound, UnsafeTaskId):
        if found:
            conn.execute("DELETE FROM tasks WHERE task_id = ?", (task_id,))
        return 0
    store_row(conn, row, rowid, chunks, texts)
    return row.total - before


def store_row(conn: sqlite3.Connection, row: TaskRow, rowid: int | None, chunks: int, texts: list[str]) -> int:
    """Insert (``rowid`` None) or update a task's row and add its new text to the search index; returns the rowid."""
    values = [getattr(row, name) for name in _ROW_COLUMNS]
    state = orjson.dumps(
        {"offsets": row.offsets, "stamps": row.stamps, "first": row.first_record_ts, "text": row.text_chars}
    )
    new_chunks = chunks + (1 if texts and chunks < MAX_CHUNK else 0)
    if rowid is None:
        cur = conn.execute(
            f"INSERT INTO tasks ({', '.join(_ROW_COLUMNS)}, chunks, state) VALUES ({', '.join('?' * 21)}, ?, ?)",
            (*values, new_chunks, state),
        )
        assert cur.lastrowid is not None
        rowid = cur.lastrowid
    else:
        assignments = ", ".join(f"{name} = ?" for name in _ROW_COLUMNS[1:])
        conn.execute(
            f"UPDATE tasks SET {assignments}, chunks = ?, state = ? WHERE id = ?",
            (*values[1:], new_chunks, state, rowid),
        )
    if new_chunks > chunks:
        conn.execute("INSERT INTO fts (rowid, body) VALUES (?, ?)", ((rowid << CHUNK_BITS) | chunks, "\n".join(texts)))
    return rowid


def known_task_ids(conn: sqlite3.Connection) -> set[str]:
    """Every task id the index has a row for."""
    return {row[0] for row in conn.execute("SELECT task_id FROM tasks")}


def forget(conn: sqlite3.Connection, task_ids: Iterable[str]) -> None:
    """Remove the rows of tasks whose directories are gone."""
    conn.executemany("DELETE FROM tasks WHERE task_id = ?", ((t,) for t in task_ids))


def _row_of(found: tuple[Any, ...]) -> TaskRow:
    row = TaskRow(**dict(zip(_ROW_COLUMNS, found[3:], strict=True)))
    state = orjson.loads(found[2])
    row.offsets = state["offsets"]
    row.stamps = state["stamps"]
    row.first_record_ts = state["first"]
    row.text_chars = state.get("text", 0)
    return row


# -- reading ----------------------------------------------------------------------------------------------------


class Reader:
    """Read access for the API: one query-only connection per thread, reopened when the file is replaced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection; IndexUnavailable while there is no usable index file."""
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            raise IndexUnavailable("the task index is not built yet") from None
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or self._local.inode != inode:
            if conn is not None:
                conn.close()
            conn = connect(self.path, readonly=True)
            self._local.conn, self._local.inode = conn, inode
        try:
            yield conn
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                raise IndexUnavailable("the task index is being rebuilt") from None
            raise
        except sqlite3.DatabaseError as exc:
            self._local.conn = None
            conn.close()
            raise IndexUnavailable(f"the task index cannot be read ({exc}); it is rebuilt from the files") from None

    def summary(self, task_id: str) -> dict[str, Any] | None:
        """The summary of one task, or None when the index has no row for it."""
        with self.connection() as conn:
            found = conn.execute(_SELECT + " WHERE task_id = ?", (task_id,)).fetchone()
        return None if found is None else summary_dict(_row_of(found))

    def search(self, query: Query) -> tuple[list[dict[str, Any]], str | None]:
        """One page of tasks matching ``query`` and the cursor of the next page (None on the last)."""
        with self.connection() as conn:
            walk = False
            if query.q is not None and query.q.strip():
                # A bounded count decides the plan (see WALK_FROM_MATCHES); it stops at the threshold.
                count = f"SELECT count(*) FROM (SELECT 1 FROM fts WHERE fts MATCH ? LIMIT {WALK_FROM_MATCHES})"
                walk = conn.execute(count, (fts_query(query.q),)).fetchone()[0] >= WALK_FROM_MATCHES
            sql, params = build_query(query, walk=walk)
            rows = conn.execute(sql, params).fetchall()
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        next_cursor = None
        if more and rows:
            last = rows[-1]
            next_cursor = encode_cursor(query.sort, last[-1], last[0])
        return [summary_dict(_row_of(r[:-1])) for r in rows], next_cursor

    def lag(self) -> tuple[int, float | None]:
        """(tasks indexed, newest update time): for the metrics."""
        with self.connection() as conn:
            count, newest = conn.execute("SELECT count(*), max(updated_ts) FROM tasks").fetchone()
        return int(count), newest


def build_query(query: Query, *, walk: bool = False) -> tuple[str, list[Any]]:
    """The SQL and parameters of a task list query (keyset pagination on (sort key, id)).

    ``walk`` makes SQLite go through the sort order's index and test each task against the search, which stops
    after one page; otherwise it collects the matches first and sorts them (best when they are few).
    """
    if query.sort not in SORTS:
        raise BadQuery(f"sort must be one of {', '.join(SORTS)}")
    expr, descending, index_name = SORTS[query.sort]
    where: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("source", query.source),
        ("status", query.status),
        ("agent_type", query.agent),
        ("user_id", query.user),
    ):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if query.since is not None:
        where.append("created_ts >= ?")
        params.append(query.since)
    if query.until is not None:
        where.append("created_ts <= ?")
        params.append(query.until)
    if query.q is not None and query.q.strip():
        where.append(f"id IN (SELECT rowid >> {CHUNK_BITS} FROM fts WHERE fts MATCH ?)")
        params.append(fts_query(query.q))
    if query.cursor is not None:
        key, rowid = decode_cursor(query.cursor, query.sort)
        where.append(f"({expr}, id) {'<' if descending else '>'} (?, ?)")
        params.extend([key, rowid])
    order = "DESC" if descending else "ASC"
    sql = f"{_SELECT.removesuffix(' FROM tasks')}, {expr} FROM tasks"
    if walk:
        sql += f" INDEXED BY {index_name}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {expr} {order}, id {order} LIMIT ?"
    params.append(query.limit + 1)
    return sql, params


#: A word of a search: no spaces, quotes or control characters (FTS5 cannot take a NUL inside a string).
_TOKEN = re.compile(r'[^\s"\x00-\x1f\x7f]+\*?')


def fts_query(text: str) -> str:
    """A user's search words as an FTS5 query: every word must occur (``word*`` matches a prefix).

    Each word is quoted, so FTS5 operators and punctuation in the input are plain text, never syntax errors.
    """
    words = []
    for token in _TOKEN.findall(text):
        prefix = token.endswith("*")
        word = token.rstrip("*")
        if word:
            words.append('"' + word.replace('"', '""') + '"' + ("*" if prefix else ""))
    if not words:
        raise BadQuery("q has no searchable words")
    return " AND ".join(words)


def encode_cursor(sort: str, key: float, rowid: int) -> str:
    """An opaque cursor: where the next page starts, for this sort order."""
    return base64.urlsafe_b64encode(orjson.dumps([sort, key, rowid])).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str) -> tuple[float, int]:
    """The (sort key, id) a cursor continues from; BadQuery if it is not one of ours or of another sort."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        given_sort, key, rowid = orjson.loads(raw)
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise BadQuery("cursor is not valid") from None
    ok_key = isinstance(key, int | float) and not isinstance(key, bool)
    if given_sort != sort or not ok_key or not isinstance(rowid, int) or isinstance(rowid, bool):
        raise BadQuery("cursor does not belong to this sort order") from None
    if not -(2**63) <= rowid < 2**63:
        raise BadQuery("cursor is not valid")
    return float(key), rowid


def summary_dict(row: TaskRow) -> dict[str, Any]:
    """The TaskSummary object of the API for a row."""
    return {
        "task_id": row.task_id,
        "source": row.source,
        "agent_type": row.agent_type,
        "user_id": row.user_id,
        "machine_id": row.machine_id,
        "status": row.status,
        "created_at": iso(row.created_ts),
        "updated_at": iso(row.updated_ts),
        "finished_at": iso(row.finished_ts),
        "duration_seconds": row.duration_seconds,
        "cost_usd": row.cost_usd,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "exit_code": row.exit_code,
        "error": row.error,
        "message": row.message,
        "events": {
            "webhook_flow": row.webhook_flow,
            "agent_output": row.agent_output,
            "user_inputs": row.user_inputs,
            "total": row.total,
        },
        "first_entry_id": row.first_entry_id,
        "last_entry_id": row.last_entry_id,
        "integrity": None,
    }

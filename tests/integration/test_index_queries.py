"""Queries of the task index against a real SQLite file: any search text is either answered or refused with
BadQuery (never an SQL error), cursors round-trip and reject tampering, and both query plans (collect-and-sort,
walk-the-index) give the same pages."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasklogger import index
from tasklogger.index import BadQuery, Query, Reader, build_query, decode_cursor, encode_cursor
from tasklogger.summary import TaskRow

WORDS = ["alpha", "beta", "gamma", "delta", "login", "read_file", "naïve", "数据"]


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> Reader:
    path = tmp_path_factory.mktemp("index") / "index.sqlite3"
    conn, fresh = index.open_writer(path)
    assert fresh
    conn.execute("BEGIN")
    for n in range(300):
        row = TaskRow(
            task_id=f"t-{n:03d}", source=("github", "jira")[n % 2], status=("running", "completed", "failed")[n % 3],
            created_ts=1_700_000_000 + (n * 7919) % 300, cost_usd=None if n % 5 == 0 else float(n % 17),
            message=f"message {n}",
        )  # fmt: skip
        text = " ".join(WORDS[k] for k in range(len(WORDS)) if n % (k + 2) == 0)
        index.store_row(conn, row, None, 0, [text] if text else [])
    conn.execute("COMMIT")
    conn.close()
    return Reader(path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(q=st.text(max_size=60))
def test_any_search_text_is_answered_or_refused_cleanly(reader: Reader, q: str) -> None:
    try:
        tasks, _ = reader.search(Query(q=q))
    except BadQuery:
        return
    assert isinstance(tasks, list)


@pytest.mark.parametrize(("q", "every"), [("alpha", 2), ("gamma delta", 20), ("read_file", 7), ("naive", 8)])
def test_search_finds_exactly_the_tasks_with_all_words(reader: Reader, q: str, every: int) -> None:
    tasks, _ = reader.search(Query(q=q, limit=500, sort="created_at"))

    expected = {f"t-{n:03d}" for n in range(300) if n % every == 0}
    assert {t["task_id"] for t in tasks} == expected


@pytest.mark.parametrize("sort", ["-created_at", "created_at", "-cost_usd", "cost_usd"])
@pytest.mark.parametrize("q", ["alpha", "beta", None])
def test_both_plans_and_every_page_size_agree(reader: Reader, sort: str, q: str | None) -> None:
    whole, _ = reader.search(Query(q=q, sort=sort, limit=500, status="completed"))
    with reader.connection() as conn:
        for walk in (False, True):
            sql, params = build_query(Query(q=q, sort=sort, limit=500, status="completed"), walk=walk)
            ids = [row[3] for row in conn.execute(sql, params).fetchall()]
            assert ids == [t["task_id"] for t in whole], walk
    paged: list[str] = []
    cursor = None
    while True:
        tasks, cursor = reader.search(Query(q=q, sort=sort, limit=7, status="completed", cursor=cursor))
        paged += [t["task_id"] for t in tasks]
        if cursor is None:
            break
    assert paged == [t["task_id"] for t in whole]


@given(key=st.floats(allow_nan=False, allow_infinity=False), rowid=st.integers(min_value=0, max_value=2**62))
def test_cursors_round_trip(key: float, rowid: int) -> None:
    assert decode_cursor(encode_cursor("-cost_usd", key, rowid), "-cost_usd") == (key, rowid)


@pytest.mark.parametrize("cursor", ["", "x", "W10", encode_cursor("cost_usd", 1.0, 2), "WyItY29zdF91c2QiLDEsMi41XQ"])
def test_foreign_or_tampered_cursors_are_refused(cursor: str) -> None:
    with pytest.raises(BadQuery):
        decode_cursor(cursor, "-cost_usd")


def test_an_index_without_a_file_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(index.IndexUnavailable):
        Reader(tmp_path / "none.sqlite3").search(Query())

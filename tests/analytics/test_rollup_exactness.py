"""Rollups stay exact: retried and overlapping batches, duplicates in one call, and stores
that had raw events before the rollup schema (or the catalog's last_called) existed."""

from __future__ import annotations

import sqlite3

import msgspec
import pytest
from analytics_oracle import DAY, HOUR, Filters, Oracle, generate, ingest, iso, same, window_of
from test_queries_oracle import NOW

from mcpmeter.analytics import queries
from mcpmeter.analytics.periods import window
from mcpmeter.analytics.queries import Query
from mcpmeter.events import ROW_FIELDS, Limits, decode_batch
from mcpmeter.ingest import rows_for
from mcpmeter.storage import open_store
from mcpmeter.storage.postgres_migrations import MIGRATIONS as PG_MIGRATIONS
from mcpmeter.storage.sqlite_migrations import MIGRATIONS as SQLITE_MIGRATIONS

SEED = 977
ANSWERS = {
    "summary": (queries.summary, Oracle.summary),
    "tools": (queries.tools, Oracle.tools),
    "timeseries": (queries.timeseries, Oracle.timeseries),
    "users": (queries.users, Oracle.users_answer),
    "errors": (queries.errors, Oracle.errors),
    "clients": (queries.clients, Oracle.clients),
    "sessions": (queries.sessions, Oracle.sessions_answer),
}
CHECKS = [("1d", Filters()), ("7d", Filters(server="weblab")), ("90d", Filters()), ("90d", Filters(client="cursor")),
          ("6h", Filters(tool="search"))]


@pytest.fixture(scope="module")
def events():
    return generate(SEED, NOW, sessions=300, users=25)


def assert_figures(store, project, oracle: Oracle) -> None:
    for period, f in CHECKS:
        q = Query(project.id, window(period, now_ms=NOW), *f)
        for name, (answer, expect) in ANSWERS.items():
            got = answer(store, q)
            problems = same(got, expect(oracle, window_of(got), f))
            assert not problems, f"{name} {period} {f}:\n" + "\n".join(problems[:20])


def test_retries_and_overlapping_batches_change_no_figure(store_url, events):
    store = open_store(store_url, durable=False)
    project = store.ensure_project("default")
    accepted, duplicates = ingest(store, project, events, NOW, seed=1, overlap=True)
    assert accepted == len(events) and duplicates > 0
    assert ingest(store, project, events, NOW, seed=2) == (0, len(events))  # every batch retried
    assert_figures(store, project, Oracle(events))
    store.close()


def test_the_same_rows_twice_in_one_transaction_count_once(store_url, events):
    """Two requests carrying the same batch may be written in one group commit; a caller may
    also hand the store one group with an id twice."""
    store = open_store(store_url, durable=False)
    project = store.ensure_project("default")
    good, _ = decode_batch(msgspec.json.encode(events), Limits(max_events=100_000), now_ms=NOW)
    rows = rows_for(project, good)
    half = rows[: len(rows) // 2]
    rest = rows[len(rows) // 2:]
    results = store.ingest([(project.id, half + half[:50]), (project.id, half + rest + rest[:50])])
    assert [tuple(r) for r in results] == [(len(half), 50), (len(rest), len(half) + 50)]
    assert_figures(store, project, Oracle(events))
    store.close()


def _insert_raw(path, project_id: int, rows: list[tuple]) -> None:
    """What a schema-1 store holds: raw events only, written as schema 1 wrote them."""
    with sqlite3.connect(path) as conn:
        conn.executemany(
            f"INSERT INTO events (project_id, {', '.join(ROW_FIELDS)}, received_at) VALUES ({', '.join('?' * (len(ROW_FIELDS) + 2))})",
            [(project_id, *row, NOW) for row in rows])
    conn.close()


def test_a_store_with_events_from_before_the_rollups_is_right_after_upgrading(tmp_path, events):
    path = tmp_path / "old.db"
    store = open_store(str(path), durable=False, upgrade=False)
    assert store.upgrade(1) == [1]
    project = store.ensure_project("default")
    old = [e for e in events if e["ts"] < NOW - 3 * DAY]
    new = [e for e in events if e["ts"] >= NOW - 3 * DAY]
    good, _ = decode_batch(msgspec.json.encode(old), Limits(max_events=100_000), now_ms=NOW)
    _insert_raw(path, project.id, rows_for(project, good))
    assert store.upgrade()[0] == 2  # rollups rebuilt from the raw events
    assert ingest(store, project, new, NOW, seed=3) == (len(new), 0)
    assert_figures(store, project, Oracle(events))
    store.close()


@pytest.mark.parametrize("to", [1, 3, 4])
def test_downgrading_and_upgrading_again_gives_the_same_figures(store_url, events, to):
    """Down to 1 drops every rollup (rebuilt from raw events); down to 3 drops the catalog's
    last_called (filled again from raw events); down to 4 (SQLite) drops the per-tool daily
    rollup and the user numbers (rebuilt from the per-client rollups and user_day)."""
    store = open_store(store_url, durable=False)
    project = store.ensure_project("default")
    ingest(store, project, events, NOW, seed=4)
    latest = store.schema_version()
    if to >= latest:
        store.close()
        pytest.skip(f"this backend's newest schema is {latest}")
    assert store.downgrade(to)[-1] == to + 1
    migrations = PG_MIGRATIONS if store_url.startswith("postgresql") else SQLITE_MIGRATIONS
    assert store.upgrade() == [m.version for m in migrations if m.version > to]  # versions may leave gaps
    assert_figures(store, project, Oracle(events))
    store.close()


def test_listings_after_the_last_call_do_not_move_last_used(store_url):
    store = open_store(store_url, durable=False)
    project = store.ensure_project("default")
    t = NOW - 2 * HOUR
    sent = [{"id": "c1", "kind": "tool_call", "ts": t, "server": "w", "tool": "a", "ok": True},
            {"id": "l1", "kind": "tool_listed", "ts": t + 60_000, "server": "w", "tool": "a"},
            {"id": "l2", "kind": "tool_listed", "ts": t + 60_000, "server": "w", "tool": "b"}]
    for batch in ([sent[0]], sent[1:], sent):  # in any order, any number of times
        good, _ = decode_batch(msgspec.json.encode(batch), now_ms=NOW)
        store.ingest([(project.id, rows_for(project, good))])
    answer = queries.tools(store, Query(project.id, window("1d", now_ms=NOW)))
    assert [(r["tool"], r["calls"], r["last_used"]) for r in answer["tools"]] == [("a", 1, iso(t))]
    assert [(r["tool"], r["first_seen"], r["last_seen"]) for r in answer["never_called"]] == [("b", iso(t + 60_000), iso(t + 60_000))]
    store.close()


def _rollup_tables(path) -> dict[str, list[tuple]]:
    """Every rollup table of a SQLite store, comparable across user numberings: histograms
    decoded, user sets as sets of user hashes, sums rounded to what answers show."""
    from mcpmeter import histogram, usersets

    with sqlite3.connect(path) as conn:
        names = {(p, n): u for p, n, u in conn.execute("SELECT project_id, number, user_hash FROM user_number")}

        def users(project_id, blob):
            n = usersets.as_int(blob)
            return frozenset(names[project_id, i] for i in range(n.bit_length()) if n >> i & 1)

        out: dict[str, list[tuple]] = {}
        for table in ("rollup_hour", "rollup_day"):
            out[table] = sorted((*r[:9], round(r[9], 6), r[10], r[11], sorted(histogram.decode(r[12]).items()))
                                for r in conn.execute(f"SELECT * FROM {table}"))
        out["rollup_tool_day"] = sorted((*r[:6], round(r[7], 6), r[6], r[8], r[9], sorted(histogram.decode(r[10]).items()),
                                         sorted(users(r[0], r[11]))) for r in conn.execute("SELECT * FROM rollup_tool_day"))
        out["user_tool_client_day"] = sorted((*r[:5], sorted(users(r[0], r[5]))) for r in conn.execute("SELECT * FROM user_tool_client_day"))
        out["user_client_day"] = sorted((*r[:4], sorted(users(r[0], r[4]))) for r in conn.execute("SELECT * FROM user_client_day"))
        for table in ("user_day", "user_hour", "user_first", "error_hour", "sessions", "session_tools", "tool_catalog",
                      "session_day", "session_tool_day", "activation", "activation_day", "error_day"):
            out[table] = sorted(conn.execute(f"SELECT * FROM {table}").fetchall())
        out["user_number"] = sorted(conn.execute("SELECT project_id, user_hash, first_seen FROM user_number").fetchall())
    conn.close()
    return out


def test_rollups_kept_at_ingest_equal_rollups_rebuilt_from_the_raw_events(tmp_path, events):
    """Group commits of several requests and projects, retries and overlapping batches at
    ingest; then the same rows rebuilt in other chunks: the same rollup rows, table by table
    (``rollup.aggregate`` groups rows by cell and session: no grouping may change a figure)."""
    path = tmp_path / "a.db"
    store = open_store(str(path), durable=False)
    project = store.ensure_project("default")
    other = store.ensure_project("other")  # two projects in one group commit
    good, _ = decode_batch(msgspec.json.encode(events), Limits(max_events=100_000), now_ms=NOW)
    rows = rows_for(project, good)
    third = len(rows) // 3
    store.ingest([(project.id, rows[:third]), (other.id, rows_for(other, good[:100])), (project.id, rows[: 2 * third])])
    ingest(store, project, events, NOW, seed=5, overlap=True)  # the rest, in overlapping batches
    at_ingest = _rollup_tables(path)
    assert at_ingest["rollup_hour"] and at_ingest["sessions"] and at_ingest["rollup_tool_day"]
    assert at_ingest["session_day"] and at_ingest["session_tool_day"] and at_ingest["activation_day"] and at_ingest["user_tool_client_day"]
    assert at_ingest["user_client_day"]
    assert at_ingest["error_day"]
    store._write(lambda conn: store._rebuild_rollups(conn, store.schema_version(), chunk=997))  # in Python, from raw events
    rebuilt = _rollup_tables(path)
    for table, expected in rebuilt.items():
        assert at_ingest[table] == expected, table
    store.close()

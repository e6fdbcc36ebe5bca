"""The analytics migration seed (002) on a real PostgreSQL: its SQL users' views and summary function.

`mcp_usage_hourly` / `mcp_usage_daily` and `mcp_usage_summary(hours)` answer the seed's own
verification queries with what mcpmeter's API answers (calls, errors, average and p95 per tool
and category), behind the same row-level security as the tables (another project's rows are
invisible to the reader role), are removed by `mcpmeter db downgrade` and come back with
`db upgrade`; `mcpmeter db sql` prints a script a SQL editor can run on an empty database.
"""

from __future__ import annotations

import subprocess
import time

import msgspec
import psycopg
import pytest

from conftest import MCPMETER
from mcpmeter.analytics import questions
from mcpmeter.events import decode_batch
from mcpmeter.ingest import rows_for
from mcpmeter.storage import open_store
from mcpmeter.storage.postgres_migrations import MIGRATIONS, READER_ROLE
from store_backends import pg_database

NEWEST = MIGRATIONS[-1].version
VIEWS_VERSION = next(m.version for m in MIGRATIONS if "mcp_usage_hourly" in m.up)

HOUR = 3_600_000
VIEWS = {"mcp_usage_hourly", "mcp_usage_daily"}


def _events(server: str, now_ms: int) -> list[dict]:
    """Tool calls this hour and two days ago, with categories, durations and errors."""
    this_hour = now_ms - now_ms % HOUR
    out = []
    for i, duration in enumerate((10.0, 20.0, 30.0, 40.0, 400.0)):
        out.append({"id": f"{server}-q{i}", "kind": "tool_call", "ts": this_hour + i, "server": server, "tool": "rag_query",
                    "category": "rag", "duration_ms": duration, "ok": i != 4, "user": f"u{i % 2}"})
    out.append({"id": f"{server}-t0", "kind": "tool_call", "ts": this_hour, "server": server, "tool": "create_task",
                "category": "task", "duration_ms": 5.0, "ok": True, "user": "u0"})
    out.append({"id": f"{server}-old", "kind": "tool_call", "ts": this_hour - 2 * 86_400_000, "server": server,
                "tool": "rag_query", "category": "rag", "duration_ms": 7.0, "ok": True, "user": "u3"})
    return out


def _load(store, project: str, server: str, now_ms: int) -> int:
    p = store.ensure_project(project)
    events, rejected = decode_batch(msgspec.json.encode(_events(server, now_ms)))
    assert not rejected
    store.ingest([(p.id, rows_for(p, events))])
    return p.id


def _as_reader(conn: psycopg.Connection, project_id: int | None) -> None:
    conn.execute(f"SET ROLE {READER_ROLE}")
    if project_id is not None:
        conn.execute(f"SET mcpmeter.project_id = '{project_id}'")


def test_the_seeds_sql_answers_as_mcpmeter_does_and_only_for_ones_project(tmp_path):
    now_ms = int(time.time() * 1000)
    this_hour = now_ms - now_ms % HOUR
    with pg_database() as url:
        store = open_store(url)
        mine = _load(store, "mine", "archon", now_ms)
        _load(store, "other", "zzsecretzz", now_ms)
        q = questions.query_for(mine, questions.window_of({"from": str(this_hour), "to": str(this_hour + HOUR)}), {})
        api = {t["tool"]: t for t in questions.ask(store, questions.QUESTIONS["tools"], q)["tools"]}
        store.close()

        with psycopg.connect(url, autocommit=True) as conn:
            _as_reader(conn, mine)
            hourly = conn.execute(
                "SELECT extract(epoch FROM hour_bucket)::bigint * 1000, server, tool_name, tool_category, call_count, error_count, "
                "avg_response_time_ms, p95_response_time_ms FROM mcp_usage_hourly ORDER BY 1, 3").fetchall()
            assert {r[1] for r in hourly} == {"archon"}  # the other project's rows are invisible
            current = {r[2]: r for r in hourly if r[0] == this_hour}
            assert set(current) == {"rag_query", "create_task"} and len(hourly) == 3
            rag = current["rag_query"]
            assert rag[3:6] == ("rag", 5, 1) and rag[6] == pytest.approx(100.0)
            assert rag[7] == api["rag_query"]["latency_ms"]["p95"]  # the API's p95, from the same histogram
            assert current["create_task"][3:6] == ("task", 1, 0)

            # The seed's verification query, on the new names.
            per_category = dict(conn.execute(
                "SELECT tool_category, SUM(call_count) FROM mcp_usage_hourly WHERE hour_bucket >= NOW() - INTERVAL '24 hours' "
                "GROUP BY hour_bucket, tool_category ORDER BY 1").fetchall())
            assert per_category == {"rag": 5, "task": 1}
            daily = conn.execute("SELECT date_bucket, tool_name, call_count FROM mcp_usage_daily ORDER BY 1, 2").fetchall()
            assert [r[2] for r in daily] == [1, 1, 5] and all(isinstance(r[0], type(daily[0][0])) for r in daily)
            summary = conn.execute("SELECT * FROM mcp_usage_summary(24)").fetchall()
            assert [(r[2], r[3], r[4], r[5], r[6]) for r in summary] == [("rag_query", "rag", 5, 1, 0.8),
                                                                        ("create_task", "task", 1, 0, 1.0)]
            assert summary[0][8] == api["rag_query"]["latency_ms"]["p95"]
            three_days = conn.execute("SELECT tool_name, call_count FROM mcp_usage_summary(72) ORDER BY 2 DESC").fetchall()
            assert three_days == [("rag_query", 6), ("create_task", 1)]

        with psycopg.connect(url, autocommit=True) as conn:
            _as_reader(conn, None)  # a reader that names no project sees nothing
            assert conn.execute("SELECT count(*) FROM mcp_usage_hourly").fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM mcp_usage_summary(24)").fetchone() == (0,)

        down = subprocess.run([*MCPMETER, "db", "downgrade", "--to", str(VIEWS_VERSION - 1), "--yes", "--db", url], capture_output=True, text=True,
                              timeout=60)
        assert down.returncode == 0, down.stderr
        with psycopg.connect(url, autocommit=True) as conn:
            assert not conn.execute("SELECT viewname FROM pg_views WHERE viewname LIKE 'mcp_usage_%'").fetchall()
            assert not conn.execute("SELECT proname FROM pg_proc WHERE proname IN ('mcp_usage_summary', 'mcp_hist_quantile')").fetchall()
        up = subprocess.run([*MCPMETER, "db", "upgrade", "--db", url], capture_output=True, text=True, timeout=60)
        assert up.returncode == 0, up.stderr
        with psycopg.connect(url, autocommit=True) as conn:
            _as_reader(conn, mine)
            assert conn.execute("SELECT sum(call_count) FROM mcp_usage_hourly").fetchone() == (7,)


def test_db_sql_prints_a_script_a_sql_editor_runs_on_an_empty_database():
    printed = subprocess.run([*MCPMETER, "db", "sql"], capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    script = printed.stdout
    assert "CREATE VIEW mcp_usage_hourly" in script and "CREATE FUNCTION mcp_usage_summary" in script
    with pg_database() as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(script)
            assert {r[0] for r in conn.execute("SELECT viewname FROM pg_views WHERE viewname LIKE 'mcp_usage_%'")} == VIEWS
        store = open_store(url, upgrade=False)
        try:
            assert store.schema_version() == NEWEST and store.upgrade() == []  # mcpmeter takes it as its own schema
            p = store.ensure_project("default")
            events, _ = decode_batch(msgspec.json.encode(_events("pasted", int(time.time() * 1000))))
            store.ingest([(p.id, rows_for(p, events))])
        finally:
            store.close()
        before = str(VIEWS_VERSION - 1)
        reverse = subprocess.run([*MCPMETER, "db", "sql", "--from", before, "--down"], capture_output=True, text=True, timeout=60)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(reverse.stdout)
            assert not conn.execute("SELECT viewname FROM pg_views WHERE viewname LIKE 'mcp_usage_%'").fetchall()
            assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone() == (VIEWS_VERSION - 1,)
    wrong = subprocess.run([*MCPMETER, "db", "sql", "--from", str(NEWEST)], capture_output=True, text=True, timeout=60)
    assert wrong.returncode != 0 and f"nothing between versions {NEWEST} and {NEWEST}" in wrong.stderr

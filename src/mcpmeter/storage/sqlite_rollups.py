"""Applying rollup deltas to SQLite with additive upserts (inside the ingest transaction)."""

from __future__ import annotations

import sqlite3

from .. import histogram
from .rollup import Deltas, aggregate

_CELL_UPSERT = """
INSERT INTO {table} (project_id, bucket, kind, server, tool, client, calls, errors, dur_count, dur_sum, dur_min, dur_max, hist)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (project_id, bucket, kind, server, tool, client) DO UPDATE SET
    calls = calls + excluded.calls,
    errors = errors + excluded.errors,
    dur_count = dur_count + excluded.dur_count,
    dur_sum = dur_sum + excluded.dur_sum,
    dur_min = min(coalesce(dur_min, excluded.dur_min), coalesce(excluded.dur_min, dur_min)),
    dur_max = max(coalesce(dur_max, excluded.dur_max), coalesce(excluded.dur_max, dur_max)),
    hist = hist_merge(hist, excluded.hist)
"""
_HOUR_UPSERT = _CELL_UPSERT.format(table="rollup_hour")
_DAY_UPSERT = _CELL_UPSERT.format(table="rollup_day")

_ERROR_UPSERT = """
INSERT INTO error_hour (project_id, bucket, server, tool, client, error_type, count, last_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (project_id, bucket, server, tool, client, error_type) DO UPDATE SET
    count = count + excluded.count, last_ts = max(last_ts, excluded.last_ts)
"""

_EARLIEST = "min(coalesce({c}, excluded.{c}), coalesce(excluded.{c}, {c}))"
_SESSION_UPSERT = f"""
INSERT INTO sessions (project_id, session_id, server, client, client_version, protocol_version, transport, user_hash,
                      first_ts, last_ts, calls, errors, init_ts, list_ts, first_call_ts)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (project_id, session_id) DO UPDATE SET
    client = coalesce(client, excluded.client),
    client_version = coalesce(client_version, excluded.client_version),
    protocol_version = coalesce(protocol_version, excluded.protocol_version),
    transport = coalesce(transport, excluded.transport),
    user_hash = coalesce(user_hash, excluded.user_hash),
    first_ts = min(first_ts, excluded.first_ts),
    last_ts = max(last_ts, excluded.last_ts),
    calls = calls + excluded.calls,
    errors = errors + excluded.errors,
    init_ts = {_EARLIEST.format(c="init_ts")},
    list_ts = {_EARLIEST.format(c="list_ts")},
    first_call_ts = {_EARLIEST.format(c="first_call_ts")}
"""

_CATALOG_UPSERT = """
INSERT INTO tool_catalog (project_id, server, tool, first_seen, last_seen) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (project_id, server, tool) DO UPDATE SET
    first_seen = min(first_seen, excluded.first_seen), last_seen = max(last_seen, excluded.last_seen)
"""

_USER_FIRST_UPSERT = """
INSERT INTO user_first (project_id, server, user_hash, first_seen) VALUES (?, ?, ?, ?)
ON CONFLICT (project_id, server, user_hash) DO UPDATE SET first_seen = min(first_seen, excluded.first_seen)
"""


def _hist_merge(a: bytes | None, b: bytes | None) -> bytes | None:
    if not a:
        return b
    if not b:
        return a
    merged = histogram.decode(a)
    histogram.add_into(merged, histogram.decode(b))
    return histogram.encode(merged)


def register_functions(conn: sqlite3.Connection) -> None:
    conn.create_function("hist_merge", 2, _hist_merge, deterministic=True)


def _cells(project_id: int, cells: dict) -> list[tuple]:
    return [
        (project_id, *key, c.calls, c.errors, c.dur_count, c.dur_sum, c.dur_min, c.dur_max,
         histogram.encode(c.hist) if c.hist else None)
        for key, c in cells.items()
    ]


def apply(conn: sqlite3.Connection, project_id: int, d: Deltas) -> None:
    p = project_id
    conn.executemany(_HOUR_UPSERT, _cells(p, d.hour))
    conn.executemany(_DAY_UPSERT, _cells(p, d.day))
    if d.user_day:
        conn.executemany("INSERT OR IGNORE INTO user_day VALUES (?, ?, ?, ?, ?, ?)", [(p, *k) for k in d.user_day])
        conn.executemany("INSERT OR IGNORE INTO user_hour VALUES (?, ?, ?)", [(p, *k) for k in d.user_hour])
        conn.executemany(_USER_FIRST_UPSERT, [(p, server, user, ts) for (server, user), ts in d.user_first.items()])
    if d.errors:
        conn.executemany(_ERROR_UPSERT, [(p, *k, n, last) for k, (n, last) in d.errors.items()])
    if d.sessions:
        conn.executemany(_SESSION_UPSERT, [
            (p, sid, s.server, s.client, s.client_version, s.protocol_version, s.transport, s.user_hash,
             s.first_ts, s.last_ts, s.calls, s.errors, s.init_ts, s.list_ts, s.first_call_ts)
            for sid, s in d.sessions.items()
        ])
        conn.executemany("INSERT OR IGNORE INTO session_tools VALUES (?, ?, ?)",
                         [(p, sid, tool) for sid, s in d.sessions.items() for tool in s.tools])
    if d.catalog:
        conn.executemany(_CATALOG_UPSERT, [(p, server, tool, a, b) for (server, tool), (a, b) in d.catalog.items()])


def rebuild(conn: sqlite3.Connection, fields: str, chunk: int = 50_000) -> int:
    """Recompute every rollup from the raw events (used when the rollup schema first appears)."""
    for table in ("rollup_hour", "rollup_day", "user_day", "user_hour", "user_first", "error_hour",
                  "sessions", "session_tools", "tool_catalog"):
        conn.execute(f"DELETE FROM {table}")
    after, total = 0, 0
    while True:
        rows = conn.execute(
            f"SELECT rowid, project_id, {fields} FROM events WHERE rowid > ? ORDER BY rowid LIMIT ?", (after, chunk)
        ).fetchall()
        if not rows:
            return total
        by_project: dict[int, list[tuple]] = {}
        for row in rows:
            by_project.setdefault(row[1], []).append(row[2:])
        for project_id, project_rows in by_project.items():
            apply(conn, project_id, aggregate(project_rows))
        after = rows[-1][0]
        total += len(rows)

"""The daily rollups of schema 11 answer as the rows they summarise did, on both backends.

Sessions, funnel subjects, error groups and per-client users of whole-day windows are read
from daily cells (``session_day``, ``session_tool_day``, ``activation_day``, ``error_day``,
``user_client_day``, ``user_tool_client_day``).
Each answer is compared with the query that read the stored sessions, funnel rows,
``error_hour`` and ``user_day`` before (kept here as the reference), for events that arrive late and out of
order: a session's earlier handshake after its calls (its start day moves), its client
name after its first events, a tool after the others, a session that starts the day before
its first call; with client, tool, server and category filters; and after a user is erased.
"""

from __future__ import annotations

import json
import random
from typing import Any

from foundation_helpers import now_ms
from mcpmeter.events import Limits, decode_batch
from mcpmeter.ingest import rows_for
from mcpmeter.storage.base import EventFilter
from mcpmeter.storage.dialect import dims

DAY_MS = 86_400_000
FILTERS: list[dict[str, str]] = [{}, {"client": "cursor"}, {"tool": "t1"}, {"server": "weblab", "tool": "t1", "client": "cursor"},
                                 {"server": "docs"}, {"category": "read"}, {"client": "claude-code", "category": "read"}]
GROUPS: list[tuple[str, ...]] = [(), ("client",), ("bucket", "client"), ("server", "tool", "client"), ("bucket",)]


def _events(day: int) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """Batches in the order they arrive (the special sessions), and more sessions to shuffle."""
    def ev(i: str, kind: str, ts: int, **more: Any) -> dict[str, Any]:
        return {"id": i, "kind": kind, "ts": ts, "server": more.pop("server", "weblab"), **more}

    late = {"session_id": "late", "client_name": "cursor", "client_version": "1.0", "protocol_version": "2025-06-18"}
    moved = {"session_id": "moved"}
    batches = [
        # starts at 23:59:59 on `day`, first call on the next day
        [ev("late-init", "initialize", day + DAY_MS - 1000, **late),
         ev("late-c1", "tool_call", day + DAY_MS + 1000, tool="t1", user="u1", ok=True, category="read", **late)],
        # calls on day + 2 with no client known yet …
        [ev("moved-c1", "tool_call", day + 2 * DAY_MS + 5000, tool="t0", user="u2", ok=True, **moved),
         ev("moved-c2", "tool_call", day + 2 * DAY_MS + 9000, tool="t0", user="u2", ok=False, error_type="Boom", **moved)],
        # … then its handshake of day + 1 with the client: the session moves to day + 1 and to that client
        [ev("moved-init", "initialize", day + DAY_MS + 7000, client_name="claude-code", client_version="2.0",
            protocol_version="2025-11-25", **moved),
         ev("moved-list", "list_tools", day + DAY_MS + 8000, **moved)],
        # … and a tool it had not called
        [ev("moved-c3", "tool_call", day + 2 * DAY_MS + 20_000, tool="t1", user="u1", ok=True, category="read", **moved)],
        # a sessionless probe, a sessionless caller whose client comes later
        [ev("probe", "initialize", day + 3 * DAY_MS, user="p1", client_name="bot"),
         ev("solo-1", "tool_call", day + 3 * DAY_MS + 100, tool="t2", user="u3", ok=True, server="docs")],
        [ev("solo-0", "tool_call", day + 3 * DAY_MS - 100, tool="t2", user="u3", ok=True, server="docs", client_name="cursor")],
    ]
    rng = random.Random(7)
    more = []
    for s in range(30):
        client = rng.choice(["cursor", "claude-code", None])
        who = {"session_id": f"s{s}", "client_name": client, "client_version": rng.choice(["1.0", "1.1", None]),
               "protocol_version": rng.choice(["2025-06-18", "2025-11-25", None])}
        server = rng.choice(["weblab", "docs"])
        start = day - DAY_MS + rng.randrange(6 * DAY_MS)
        more.append(ev(f"s{s}-init", "initialize", start, server=server, **who))
        for c in range(rng.randrange(0, 5)):
            tool = rng.choice(["t0", "t2", "t3"])  # t1: the special sessions' only
            more.append(ev(f"s{s}-c{c}", "tool_call", start + (c + 1) * rng.randrange(1, 4 * 3_600_000), server=server, tool=tool,
                           user=f"u{rng.randrange(8)}", ok=rng.random() < 0.8, category="read" if tool == "t3" else "write",
                           **who))
    rng.shuffle(more)
    return batches, more


def _ingest(store: Any, project: Any, batch: list[dict[str, Any]], now: int) -> list[Any]:
    good, rejected = decode_batch(json.dumps(batch).encode(), Limits(max_events=10_000), now_ms=now)
    assert not rejected, rejected
    rows = rows_for(project, good)
    store.ingest([(project.id, rows)])
    return rows


# ---- the queries that answered before schema 11: the reference ----------------------------------


def _ref_session_counts(store: Any, f: EventFilter) -> list[tuple[Any, ...]]:
    where, params = store._sessions_where(f)
    return store._fetch(f.project_id, "SELECT s.client, s.client_version, s.protocol_version, count(*) FROM sessions s "
                                      f"WHERE {where} GROUP BY s.client, s.client_version, s.protocol_version", params)


def _ref_users(store: Any, f: EventFilter, group: tuple[str, ...]) -> list[tuple[Any, ...]]:
    source, params = store._user_source(f, "day", need_dims=True)
    cols = ", ".join(group)
    sql = f"SELECT {cols + ', ' if cols else ''}count(DISTINCT user_hash) FROM ({source}) AS s"
    return store._fetch(f.project_id, sql + (f" GROUP BY {cols}" if cols else ""), params)


def _ref_new_users(store: Any, f: EventFilter) -> int:
    source, params = store._user_source(f, "day")
    first = "SELECT user_hash, min(first_seen) AS first_seen FROM user_first WHERE project_id = ?"
    first_params: list[Any] = [f.project_id]
    if f.server is not None:
        first += " AND server = ?"
        first_params.append(f.server)
    return int(store._fetch(f.project_id, f"SELECT count(*) FROM (SELECT DISTINCT user_hash FROM ({source}) AS s) a "
                                          f"JOIN ({first} GROUP BY user_hash) b USING (user_hash) WHERE b.first_seen >= ?",
                            [*params, *first_params, f.start_ms])[0][0])


def _ref_category_users(store: Any, f: EventFilter) -> list[tuple[Any, ...]]:
    source, params = store._user_source(f, "day", need_dims=True)
    return store._fetch(f.project_id, f"SELECT c.category, count(DISTINCT s.user_hash) FROM ({source}) AS s LEFT JOIN tool_catalog c "
                                      "ON c.project_id = ? AND c.server = s.server AND c.tool = s.tool GROUP BY c.category",
                        [*params, f.project_id])


def _ref_activation(store: Any, f: EventFilter) -> list[tuple[Any, ...]]:
    sql = ("SELECT server, client, count(*), sum(CASE WHEN subject LIKE 's:%' THEN 1 ELSE 0 END), count(handshake_ts), "
           "count(list_ts), count(call_ts), sum(CASE WHEN list_ts IS NOT NULL AND call_ts IS NULL THEN 1 ELSE 0 END) "
           "FROM activation WHERE project_id = ? AND first_ts >= ? AND first_ts < ?")
    params: list[Any] = [f.project_id, f.start_ms, f.end_ms]
    for column, value in (("server", f.server), ("client", f.client)):
        if value is not None:
            sql += f" AND {column} = ?"
            params.append(value)
    return [(s, c, *(int(n) for n in counts)) for s, c, *counts in store._fetch(f.project_id, sql + " GROUP BY server, client", params)]


def _ref_error_groups(store: Any, f: EventFilter) -> list[tuple[Any, ...]]:
    where, params = dims(f)
    c = store._dialect.collate
    rows = store._fetch(f.project_id, "SELECT server, tool, error_type, outcome, sum(count), max(last_ts) FROM error_hour "
                                      f"WHERE project_id = ? AND bucket >= ? AND bucket < ? AND outcome <> 'cancelled'{where} "
                                      f"GROUP BY server, tool, error_type, outcome "
                                      f"ORDER BY sum(count) DESC, server{c}, tool{c}, error_type{c}, outcome{c}",
                        [f.project_id, f.start_ms, f.end_ms, *params])
    return [(server, tool, error, outcome, int(n), last) for server, tool, error, outcome, n, last in rows]


def _same(got: list[tuple[Any, ...]], expected: list[tuple[Any, ...]], what: str) -> None:
    assert sorted(map(tuple, got), key=repr) == sorted((tuple(int(v) if isinstance(v, int) else v for v in r) for r in expected),
                                                       key=repr), what


def _check(store: Any, project_id: int, day: int) -> None:
    windows = [(day - 2 * DAY_MS, day + 6 * DAY_MS), (day, day + DAY_MS), (day + DAY_MS, day + 3 * DAY_MS)]
    for start, end in windows:
        for extra in FILTERS:
            f = EventFilter(project_id, start, end, **extra)
            what = f"{(start - day) // DAY_MS}..{(end - day) // DAY_MS} {extra}"
            _same(store.session_counts(f), _ref_session_counts(store, f), f"session_counts {what}")
            for group in GROUPS:
                _same(store.users(f, "day", group), _ref_users(store, f, group), f"users{group} {what}")
            assert store.new_users(f, "day") == _ref_new_users(store, f), f"new_users {what}"
            by_day = {b: _ref_new_users(store, f._replace(start_ms=b, end_ms=b + DAY_MS)) for b in range(start, end, DAY_MS)}
            assert store.new_users_by_bucket(f, "day") == {b: n for b, n in by_day.items() if n}, f"new_users_by_bucket {what}"
            _same(store.category_users(f, "day"), _ref_category_users(store, f), f"category_users {what}")
            _same(store.activation(f), _ref_activation(store, f), f"activation {what}")
            assert store.error_groups(f) == _ref_error_groups(store, f), f"error_groups {what}"


def test_the_daily_rollups_answer_as_the_rows_they_summarise(store):
    now = now_ms()
    day = now - now % DAY_MS - 10 * DAY_MS
    project = store.ensure_project("default")
    batches, more = _events(day)
    rows = []
    for batch in batches:
        rows += _ingest(store, project, batch, now)
    for i in range(0, len(more), 7):
        rows += _ingest(store, project, more[i:i + 7], now)
    p = project.id
    # the session that started on `day` counts there, also for the tool it first called the next day
    assert store.session_counts(EventFilter(p, day, day + DAY_MS, tool="t1")) == [("cursor", "1.0", "2025-06-18", 1)]
    assert store.session_counts(EventFilter(p, day + 2 * DAY_MS, day + 3 * DAY_MS, tool="t1")) == []
    # the session whose handshake came late moved to its day and its client, with the tool it added
    moved = EventFilter(p, day + DAY_MS, day + 2 * DAY_MS, client="claude-code")
    assert ("claude-code", "2.0", "2025-11-25", 1) in store.session_counts(moved)
    assert ("claude-code", "2.0", "2025-11-25", 1) in store.session_counts(moved._replace(tool="t1"))
    _check(store, p, day)
    # erase a user present in several sessions, days and clients
    u1 = next(r.user_hash for r in rows if r.event_id == "late-c1")
    store.delete_user(p, u1)
    _check(store, p, day)
    assert store.session_counts(EventFilter(p, day, day + DAY_MS, tool="t1")) == []  # its only event went with it


def test_a_store_upgraded_to_schema_11_fills_the_daily_rollups_from_what_it_holds(store):
    """Down to 10 drops the daily rollups; the migration back fills them from the sessions, the
    funnel and user_day; ingest then keeps them current."""
    now = now_ms()
    day = now - now % DAY_MS - 10 * DAY_MS
    project = store.ensure_project("default")
    batches, more = _events(day)
    for batch in batches[:3]:
        _ingest(store, project, batch, now)
    for i in range(0, len(more) // 2, 5):
        _ingest(store, project, more[i:i + 5], now)
    assert store.downgrade(10) == [11]
    assert store.upgrade() == [11]
    _check(store, project.id, day)
    for batch in batches[3:]:
        _ingest(store, project, batch, now)
    for i in range(len(more) // 2, len(more), 5):
        _ingest(store, project, more[i:i + 5], now)
    _check(store, project.id, day)

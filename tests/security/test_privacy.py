"""Privacy: user identifiers hashed on the client when asked (raw ids never leave the
machine), and one user's data deleted exactly: afterwards every rollup answer is what it
would be had the user never been recorded (where raw events still cover the day), and
nothing that identifies them remains anywhere (both backends)."""

from __future__ import annotations

import gzip
import json
import os
import sqlite3
import stat
import subprocess

import pytest

from conftest import MCPMETER, free_port, make_keys, start_collector, stop_collector
from foundation_helpers import now_ms
from mcpmeter import Meter, histogram
from mcpmeter.events import decode_batch
from mcpmeter.identity import ClientUserHasher, client_user_key
from mcpmeter.ingest import hasher_for, rows_for
from mcpmeter.storage import open_store
from mcpmeter.storage.base import EventFilter
from mcpmeter.storage.rollup import DAY_MS

# ---- hashing on the client -----------------------------------------------------------------


def test_hashed_users_never_leave_the_machine_raw(tmp_path, isolated_env):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: the batch is spooled, and we read what would be sent
    meter = Meter(server="s", url=dead, user="alice@corp.example", hash_users=True, spool=tmp_path / "spool.db")
    meter.record("search")
    meter.record("search", user="bob@corp.example")
    meter.flush(10)
    meter.shutdown(1)
    [(body,)] = sqlite3.connect(tmp_path / "spool.db").execute("SELECT body FROM spool").fetchall()
    sent = gzip.decompress(body)
    assert b"alice" not in sent and b"bob" not in sent
    hasher = ClientUserHasher(client_user_key())
    assert {e["user"] for e in json.loads(sent)} == {hasher("alice@corp.example"), hasher("bob@corp.example")}
    key_file = isolated_env / "user-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    r = subprocess.run([*MCPMETER, "users", "hash", "alice@corp.example"], capture_output=True, text=True, timeout=30,
                       env={**os.environ})
    assert r.stdout.strip() == hasher("alice@corp.example")


def test_the_collector_rehashes_client_hashes_consistently(tmp_path):
    db = tmp_path / "c.db"
    store = open_store(str(db))
    keys = make_keys(store)
    store.close()
    c = start_collector(db)
    try:
        for _ in range(2):  # two processes of the same machine: one user
            meter = Meter(server="s", url=c.url, api_key=keys.ingest, user="alice", hash_users=True, spool=tmp_path / "sp.db")
            meter.record("search")
            assert meter.shutdown(10) and meter.stats.sent == 1
    finally:
        stop_collector(c)
    store = open_store(str(db))
    project = store.project_by_name("default")
    [row1, row2] = store.export_events(project.id)
    expected = hasher_for(project)(ClientUserHasher(client_user_key())("alice"))
    assert row1[17] == row2[17] == expected  # user_hash column: stable, and not the hash of the raw id
    assert expected != hasher_for(project)("alice")
    store.close()


# ---- deleting one user's data --------------------------------------------------------------


def _events(now: int, users: dict[str, int]) -> list[dict]:
    """Calls, errors and sessions of each user over the last three days (all within raw retention)."""
    out = []
    for user, n in users.items():
        for i in range(n):
            day = i % 3
            ts = now - day * DAY_MS - (i * 7919 % 3_600_000)
            out.append({"id": f"{user}-{i}", "kind": "tool_call", "ts": ts, "server": "weblab", "tool": ["search", "fetch"][i % 2],
                        "user": user, "duration_ms": 1.0 + (i * 37 % 250) / 3, "ok": i % 5 != 0, "session_id": f"{user}-s{day}",
                        "client_name": "cursor", **({"error_type": "Timeout"} if i % 5 == 0 else {})})
        out.append({"id": f"{user}-init", "kind": "initialize", "ts": now - 1000, "server": "weblab", "user": user,
                    "session_id": f"{user}-s0", "client_name": "cursor"})
    return out


def _ingest(store, events: list[dict], project_name: str = "default") -> None:
    project = store.ensure_project(project_name)
    valid, rejected = decode_batch(json.dumps(events).encode())
    assert not rejected
    store.ingest([(project.id, rows_for(project, valid))])


def _answers(store, project_name: str) -> dict:
    p = store.project_by_name(project_name)
    now = now_ms()
    day = now - now % DAY_MS
    week = EventFilter(p.id, day - 6 * DAY_MS, day + DAY_MS)
    hours = EventFilter(p.id, day - DAY_MS, day + DAY_MS)

    def plain(v):
        if isinstance(v, float):
            return round(v, 6)
        if isinstance(v, bytes):  # a histogram: the same bins, however the bytes were laid out
            return tuple(sorted(histogram.decode(v).items()))
        return v

    def rounded(rows):
        return sorted(tuple(plain(v) for v in row) for row in rows)

    return {
        "cells_day": rounded(store.cells(week, "day", kinds=("tool_call", "initialize"))),
        "cells_hour": rounded(store.cells(hours, "hour")),
        "tool_cells": rounded(store.tool_cells(week, "day")),
        "users_day": rounded(store.users(week, "day", ("bucket", "tool"))),
        "users_hour": rounded(store.users(hours, "hour")),
        "new_users": store.new_users(week, "day"),
        "errors": rounded(store.error_groups(week)),
        "sessions": rounded(store.sessions(week)),
        "distinct": store.distinct_users(week),
        "events": store.count_events(week, kind=None),
    }


def test_deleting_a_user_leaves_what_would_be_there_without_them(store, tmp_path):
    now = now_ms()
    salt_project = store.ensure_project("default")
    _ingest(store, _events(now, {"alice": 40, "bob": 25, "carol": 10}))
    alice = hasher_for(salt_project)("alice")
    before = _answers(store, "default")
    counts = store.delete_user(salt_project.id, alice)
    assert counts["events"] == 41 and counts["days_recomputed"] == 3 and counts["days_left_aggregated"] == 0
    after = _answers(store, "default")
    assert after != before
    # the oracle: the same store, as if alice had never been recorded (same salt, so same hashes)
    store.ensure_project("oracle")
    oracle_project = store.project_by_name("oracle")
    oracle_rows = rows_for(salt_project, decode_batch(json.dumps(_events(now, {"bob": 25, "carol": 10})).encode())[0])
    store.ingest([(oracle_project.id, oracle_rows)])
    expected = _answers(store, "oracle")
    assert after == expected
    again = store.delete_user(salt_project.id, alice)  # nothing left to find
    assert again["events"] == 0 and _answers(store, "default") == expected


def test_days_pruned_of_raw_events_keep_counts_but_lose_the_user(store):
    now = now_ms()
    project = store.ensure_project("default")
    old = now - 5 * DAY_MS
    events = [{"id": f"{u}-{i}", "kind": "tool_call", "ts": old + i, "server": "weblab", "tool": "search", "user": u}
              for u in ("alice", "bob") for i in range(3)]
    _ingest(store, events)
    store.prune(raw_before_ms=now - now % DAY_MS - 2 * DAY_MS, rollups_before_ms=0)  # raw events of that day are gone
    day = old - old % DAY_MS
    window = EventFilter(project.id, day, day + DAY_MS)
    assert store.users(window, "day") == [(2,)]
    counts = store.delete_user(project.id, hasher_for(project)("alice"))
    assert counts["events"] == 0 and counts["user_day"] >= 1
    assert store.users(window, "day") == [(1,)]  # alice is out of every user set
    assert sum(c[5] for c in store.cells(window, "day")) == 6  # her calls stay in the totals, anonymous


def test_the_cli_and_the_admin_endpoint_delete_a_user(tmp_path):
    db = tmp_path / "c.db"
    store = open_store(str(db))
    keys = make_keys(store)
    _ingest(store, _events(now_ms(), {"alice": 5, "bob": 5}))
    store.close()
    base = {k: v for k, v in os.environ.items() if not k.startswith("MCPMETER_")}
    r = subprocess.run([*MCPMETER, "users", "delete", "--user", "alice", "--yes", "--db", str(db)], capture_output=True,
                       text=True, timeout=60, env=base)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["deleted"]["events"] == 6
    c = start_collector(db)
    try:
        import httpx

        r = httpx.delete(c.url + "/v1/admin/users", params={"user": "bob"}, headers={"Authorization": f"Bearer {keys.admin}"})
        assert r.status_code == 200 and r.json()["deleted"]["events"] == 6
        assert httpx.delete(c.url + "/v1/admin/users", params={"user": "bob"},
                            headers={"Authorization": f"Bearer {keys.read}"}).status_code == 403
    finally:
        stop_collector(c)
    store = open_store(str(db))
    p = store.project_by_name("default")
    assert store.count_events(EventFilter(p.id, 0, 1 << 62), kind=None) == 0
    actions = [(e.action, e.source) for e in store.audit_entries()]
    assert actions == [("user.delete", "cli"), ("user.delete", "http")]
    store.close()


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_no_row_anywhere_names_a_deleted_user(store):
    project = store.ensure_project("default")
    _ingest(store, _events(now_ms(), {"alice": 12, "bob": 3}))
    alice = hasher_for(project)("alice")
    store.delete_user(project.id, alice)
    conn = sqlite3.connect(store.path)
    tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for table in tables:
        columns = [c[1] for c in conn.execute(f"PRAGMA table_info({table})")]
        if "user_hash" in columns:
            assert conn.execute(f"SELECT count(*) FROM {table} WHERE user_hash = ?", (alice,)).fetchone()[0] == 0, table
        if "session_id" in columns:
            assert conn.execute(f"SELECT count(*) FROM {table} WHERE session_id LIKE 'alice-%'").fetchone()[0] == 0, table
    conn.close()

"""The embedded SQLite store: schema migrations, projects and keys, idempotent ingest, reads."""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import closing

import pytest

from foundation_helpers import event, everything, now_ms, stored_count, stored_events
from mcpmeter import keys as keylib
from mcpmeter.events import decode_batch
from mcpmeter.exceptions import ConfigError, SchemaVersionError, StorageError
from mcpmeter.ingest import rows_for
from mcpmeter.storage import open_store, resolve_db
from mcpmeter.storage.base import EventFilter
from mcpmeter.storage.sqlite_migrations import MIGRATIONS

LATEST = MIGRATIONS[-1].version
# Tests that look inside the SQLite file run on that backend only (the shared `store`
# fixture covers both; tests/storage_pg has the PostgreSQL counterparts).
sqlite_only = pytest.mark.parametrize("store", ["sqlite"], indirect=True)


def ingest(store, events, project: str = "default"):
    p = store.ensure_project(project)
    valid, rejected = decode_batch(json.dumps(events).encode())
    assert not rejected, rejected
    return store.ingest([(p.id, rows_for(p, valid))])[0]


def tables(path) -> set[str]:
    with closing(sqlite3.connect(path)) as conn:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


# ---- opening ------------------------------------------------------------------------------


def test_open_store_creates_and_migrates_a_new_file(tmp_path):
    path = tmp_path / "nested" / "dir" / "m.db"
    s = open_store(str(path))
    try:
        assert s.schema_version() == LATEST
        assert {"projects", "api_keys", "events", "schema_migrations"} <= tables(path)
    finally:
        s.close()


def test_open_store_accepts_a_sqlite_url(tmp_path):
    s = open_store(f"sqlite:///{tmp_path / 'u.db'}")
    s.close()
    assert (tmp_path / "u.db").exists()


def test_the_default_store_is_in_mcpmeter_home_and_mcpmeter_db_overrides_it(isolated_env, tmp_path, monkeypatch):
    assert resolve_db() == str(isolated_env / "mcpmeter.db")
    monkeypatch.setenv("MCPMETER_DB", str(tmp_path / "env.db"))
    assert resolve_db() == str(tmp_path / "env.db")
    assert resolve_db(str(tmp_path / "arg.db")) == str(tmp_path / "arg.db")


@pytest.mark.parametrize("url", ["mysql://db/x", "redis://localhost/0"])
def test_unsupported_store_urls_are_config_errors_with_a_hint(url):
    with pytest.raises(ConfigError) as info:
        open_store(url)
    assert info.value.hint


def test_an_unopenable_path_is_a_storage_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError) as info:
        open_store(str(blocker / "sub" / "m.db"))
    assert info.value.hint


# ---- schema -------------------------------------------------------------------------------


@sqlite_only
def test_downgrade_to_zero_removes_everything_and_upgrade_restores_it(store):
    ingest(store, [event()])
    assert store.downgrade(0) == [m.version for m in reversed(MIGRATIONS)]
    assert store.schema_version() == 0
    assert tables(store.path) == {"schema_migrations"}
    assert store.downgrade(0) == []  # nothing left to revert
    assert store.upgrade() == [m.version for m in MIGRATIONS]
    assert store.schema_version() == LATEST
    assert store.upgrade() == []  # idempotent
    assert stored_count(store) == 0
    ingest(store, [event()])
    assert stored_count(store) == 1


def test_upgrade_to_a_step_and_a_version_that_does_not_exist(tmp_path):
    s = open_store(str(tmp_path / "m.db"), upgrade=False)
    try:
        assert s.schema_version() == 0
        assert s.upgrade(0) == []
        assert s.schema_version() == 0
        with pytest.raises(SchemaVersionError, match=f"newest this mcpmeter knows is {LATEST}"):
            s.upgrade(LATEST + 1)
        with pytest.raises(SchemaVersionError):
            s.downgrade(-1)
    finally:
        s.close()


@sqlite_only
def test_a_store_from_a_newer_mcpmeter_is_refused_with_a_hint(store):
    with closing(sqlite3.connect(store.path, isolation_level=None)) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (?, 'future', 0)", (LATEST + 5,))
    with pytest.raises(SchemaVersionError) as info:
        store.upgrade()
    assert f"schema version {LATEST + 5}" in str(info.value)
    assert "upgrade mcpmeter" in info.value.hint


# ---- projects and keys ----------------------------------------------------------------------


def test_projects_are_created_once_with_their_own_salt(store):
    a = store.ensure_project("a")
    assert store.ensure_project("a") == a
    b = store.ensure_project("b")
    assert a.id != b.id and a.user_salt != b.user_salt
    assert store.project_by_id(b.id) == b
    assert store.project_by_name("missing") is None


def test_keys_add_list_revoke(store):
    a = store.ensure_project("a")
    b = store.ensure_project("b")
    key = keylib.new_key()
    info = store.add_key(a.id, "ci", keylib.hash_key(key), keylib.display_prefix(key), ["ingest", "read", "ingest"])
    assert (info.name, info.project, info.scopes) == ("ci", "a", frozenset({"ingest", "read"}))
    assert info.prefix == key[:11] and key.startswith("mcpm_")
    assert info.active(now_ms())
    assert store.key_by_hash(keylib.hash_key(key)) == info
    assert store.key_by_hash(keylib.hash_key(keylib.new_key())) is None
    store.add_key(b.id, "ci", keylib.hash_key("other"), "mcpm_other", ["read"])  # same name, other project
    assert [k.project for k in store.list_keys()] == ["a", "b"]
    assert [k.name for k in store.list_keys(b.id)] == ["ci"]

    assert store.revoke_key(a.id, "ci") == 1
    assert store.revoke_key(a.id, "ci") == 0  # already revoked
    revoked = store.key_by_hash(keylib.hash_key(key))
    assert revoked.revoked_at is not None and not revoked.active(now_ms())
    assert store.key_by_hash(keylib.hash_key("other")).active(now_ms())  # b's key untouched


def test_revoke_by_prefix(store):
    p = store.ensure_project("p")
    key = keylib.new_key()
    store.add_key(p.id, "k", keylib.hash_key(key), keylib.display_prefix(key), ["ingest"])
    assert store.revoke_key(None, keylib.display_prefix(key)) == 1
    assert not store.key_by_hash(keylib.hash_key(key)).active(now_ms())


def test_a_duplicate_key_name_is_a_clear_error_unless_replaced(store):
    p = store.ensure_project("p")
    store.add_key(p.id, "k", keylib.hash_key("one"), "mcpm_one", ["ingest"])
    with pytest.raises(StorageError, match="a key named 'k' already exists") as info:
        store.add_key(p.id, "k", keylib.hash_key("two"), "mcpm_two", ["ingest"])
    assert info.value.hint
    store.add_key(p.id, "k", keylib.hash_key("two"), "mcpm_two", ["ingest"], replace=True)
    assert store.key_by_hash(keylib.hash_key("one")) is None
    assert store.key_by_hash(keylib.hash_key("two")).name == "k"


def test_an_expired_key_is_not_active(store):
    p = store.ensure_project("p")
    soon = store.add_key(p.id, "soon", keylib.hash_key("soon"), "mcpm_soon", ["read"], expires_at=now_ms() + 60_000)
    gone = store.add_key(p.id, "gone", keylib.hash_key("gone"), "mcpm_gone", ["read"], expires_at=now_ms() - 1)
    assert soon.active(now_ms())
    assert not soon.active(now_ms() + 61_000)
    assert not gone.active(now_ms())


def test_touch_keys_keeps_the_latest_use(store):
    p = store.ensure_project("p")
    k = store.add_key(p.id, "k", keylib.hash_key("k"), "mcpm_k", ["ingest"])
    assert k.last_used_at is None
    store.touch_keys({k.id: 2000})
    store.touch_keys({k.id: 1000})  # an older report does not move it back
    assert store.key_by_hash(keylib.hash_key("k")).last_used_at == 2000


# ---- ingest ---------------------------------------------------------------------------------


def test_ingest_is_idempotent_by_event_id(store):
    batch = [event(), event(), event()]
    assert tuple(ingest(store, batch)) == (3, 0)
    assert tuple(ingest(store, [*batch, event()])) == (1, 3)
    assert stored_count(store) == 4


def test_the_same_id_in_two_projects_is_two_events(store):
    e = event()
    assert tuple(ingest(store, [e], "a")) == (1, 0)
    assert tuple(ingest(store, [e], "b")) == (1, 0)
    assert stored_count(store) == 2


def test_ingest_of_several_groups_is_one_result_per_group(store):
    a, b = store.ensure_project("a"), store.ensure_project("b")
    shared = event()
    rows = lambda p, evs: rows_for(p, decode_batch(json.dumps(evs).encode())[0])  # noqa: E731
    results = store.ingest([(a.id, rows(a, [shared, event()])), (b.id, rows(b, [shared])), (a.id, rows(a, [shared]))])
    assert [tuple(r) for r in results] == [(2, 0), (1, 0), (0, 1)]


def test_a_failed_ingest_stores_nothing(store):
    p = store.ensure_project("p")
    good = rows_for(p, decode_batch(json.dumps([event()]).encode())[0])
    broken = [good[0][:-1]]  # one column short
    with pytest.raises(StorageError):
        store.ingest([(p.id, good), (p.id, broken)])
    assert stored_count(store) == 0


@sqlite_only
def test_users_are_stored_as_keyed_hashes_differing_per_project(store):
    ingest(store, [event(user="alice@example.com")], "a")
    ingest(store, [event(user="alice@example.com")], "b")
    (ra,), (rb,) = stored_events(store, "a"), stored_events(store, "b")
    assert ra["user_hash"] and rb["user_hash"] and ra["user_hash"] != rb["user_hash"]
    assert b"alice@example.com" not in store.path.read_bytes()
    wal = store.path.with_name(store.path.name + "-wal")
    assert not wal.exists() or b"alice@example.com" not in wal.read_bytes()


def test_concurrent_writers_from_threads_lose_nothing(store):
    batches = [[event() for _ in range(50)] for _ in range(8)]
    threads = [threading.Thread(target=ingest, args=(store, b)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stored_count(store) == 400


# ---- reads ----------------------------------------------------------------------------------


@pytest.fixture
def filled(store):
    t0 = now_ms() - 3 * 86_400_000
    ingest(store, [
        event(ts=t0, server="weblab", tool="search", duration_ms=30, user="u1", client_name="cursor"),
        event(ts=t0 + 1, server="weblab", tool="search", duration_ms=10, user="u2", client_name="claude-code"),
        event(ts=t0 + 2, server="weblab", tool="search", duration_ms=20, user="u1", ok=False, error_type="E", client_name="cursor"),
        event(ts=t0 + 86_400_000, server="weblab", tool="details", duration_ms=5, user="u3", client_name="cursor"),
        event(ts=t0 + 86_400_000, server="time", tool="now", duration_ms=None, user="u1", client_name="cursor"),
        event(ts=t0 + 86_400_000, kind="session_start", tool=None, user="u9"),
    ])
    ingest(store, [event(ts=t0, server="weblab", tool="search", user="other")], "other")
    return store, t0


def test_count_events_filters_by_kind_time_server_tool_and_client(filled):
    store, t0 = filled
    f = everything(store)
    assert store.count_events(f) == 5  # tool calls only
    assert store.count_events(f, kind=None) == 6
    assert store.count_events(f, kind="session_start") == 1
    assert store.count_events(f._replace(server="weblab")) == 4
    assert store.count_events(f._replace(tool="search")) == 3
    assert store.count_events(f._replace(client="claude-code")) == 1
    # the window is half-open: [start, end)
    assert store.count_events(f._replace(start_ms=t0, end_ms=t0 + 2)) == 2
    assert store.count_events(f._replace(start_ms=t0 + 2, end_ms=t0 + 86_400_000)) == 1


def test_distinct_users_counts_people_not_calls(filled):
    store, _ = filled
    f = everything(store)
    assert store.distinct_users(f) == 3  # session_start's user is not a tool call
    assert store.distinct_users(f._replace(tool="search")) == 2


def test_projects_never_see_each_others_events(filled):
    store, _ = filled
    assert store.count_events(everything(store, "other")) == 1
    assert store.distinct_users(everything(store, "other")) == 1
    assert [row["user_hash"] for row in stored_events(store, "other")] != [None]


def test_export_events_pages_in_insertion_order(filled):
    store, _ = filled
    p = store.project_by_name("default")
    first = store.export_events(p.id, 0, 4)
    rest = store.export_events(p.id, first[-1][0], 4)
    assert len(first) == 4 and len(rest) == 2
    assert store.export_events(p.id, rest[-1][0], 4) == []
    assert [r[0] for r in first + rest] == sorted(r[0] for r in first + rest)


def test_a_reader_sees_what_was_written_from_another_connection(tmp_path):
    path = str(tmp_path / "shared.db")
    writer, reader = open_store(path), open_store(path)
    try:
        assert reader.project_by_name("default") is None
        ingest(writer, [event()])
        assert reader.count_events(EventFilter(reader.project_by_name("default").id, 0, 1 << 62)) == 1
    finally:
        writer.close()
        reader.close()


# ---- what ingest knows is stored (sqlite_rollups.Known) -----------------------------------

def _rollup_rows(path) -> dict[str, int]:
    with closing(sqlite3.connect(path)) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("user_day", "user_hour", "session_tools")}  # the rows prune removes


def _calls(n: int) -> list[dict]:
    """Calls by two users in two sessions with three tools, ten minutes ago (new ids each time)."""
    ts = now_ms() - 600_000
    return [event(ts=ts + i, user=f"u{i % 2}", session_id=f"s{i % 2}", tool=f"t{i % 3}") for i in range(n)]


@pytest.mark.parametrize("who_prunes", ["another connection", "the same store"])
def test_rollup_rows_removed_by_any_other_write_are_stored_again_by_the_next_ingest(tmp_path, who_prunes):
    """Ingest skips user and session-tool rows it stored before; a prune (here, or by another
    process on the same file) removes them, and the next ingest of the same users must add them back."""
    path = tmp_path / "known.db"
    store = open_store(str(path), durable=False)
    ingest(store, _calls(12))
    before = _rollup_rows(path)
    assert all(before.values()), before
    pruner = open_store(str(path), durable=False) if who_prunes == "another connection" else store
    future = now_ms() + 86_400_000
    pruner.prune(raw_before_ms=future, rollups_before_ms=future)
    assert _rollup_rows(path)["user_day"] == 0
    ingest(store, _calls(12))
    assert _rollup_rows(path) == before
    store.close()
    if pruner is not store:
        pruner.close()


def test_stores_opening_one_new_file_at_once_all_open(tmp_path):
    """Two meters or processes starting together on a new local store: switching the new file
    to WAL answers "database is locked" at once (no busy wait) to all but one of them; each
    must still open it, within the busy timeout, instead of failing to record."""
    failures: list[str] = []
    for round_ in range(100):
        path = tmp_path / f"new-{round_}.db"
        gate = threading.Barrier(4)

        def open_it(path=path, gate=gate) -> None:
            gate.wait()
            try:
                open_store(str(path)).close()
            except StorageError as exc:
                failures.append(str(exc))

        threads = [threading.Thread(target=open_it) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not failures, failures[:3]
    with closing(sqlite3.connect(tmp_path / "new-0.db")) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

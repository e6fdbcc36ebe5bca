"""What only the PostgreSQL store has: row-level security, partitions, concurrent
migrations and writers, and the same answers as SQLite for the same events.

The Store protocol itself is covered for both backends by tests/storage and
tests/analytics (the shared ``store`` fixture runs each test on SQLite and PostgreSQL).
"""

from __future__ import annotations

import json
import random
import socket
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from foundation_helpers import event, everything, now_ms, stored_count
from mcpmeter import histogram
from mcpmeter.events import ROW_FIELDS, Limits, decode_batch
from mcpmeter.exceptions import SchemaVersionError, StorageError
from mcpmeter.ingest import rows_for
from mcpmeter.storage import open_store
from mcpmeter.storage.base import EventFilter
from mcpmeter.storage.postgres import redact
from mcpmeter.storage.postgres_migrations import MIGRATIONS as PG_MIGRATIONS
from mcpmeter.storage.postgres_partitions import DAY_MS, name_of
from mcpmeter.storage.sqlite_migrations import MIGRATIONS as SQLITE_MIGRATIONS

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "analytics"))
from analytics_oracle import generate

LATEST = PG_MIGRATIONS[-1].version
postgres_only = pytest.mark.parametrize("store", ["postgres"], indirect=True)
ISOLATED = ("events", "event_ids", "rollup_hour", "rollup_day", "user_day", "user_hour", "user_first", "error_hour",
            "sessions", "session_tools", "tool_catalog", "measurements", "measurement_day", "server_events",
            "user_number", "rollup_tool_day")


def ingest(store, events, project: str = "default", now: int | None = None):
    p = store.ensure_project(project)
    valid, rejected = decode_batch(json.dumps(events).encode(), Limits(max_events=100_000), now_ms=now)
    assert not rejected, rejected
    return store.ingest([(p.id, rows_for(p, valid))])[0]


def partition_days(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        names = [n for (n,) in conn.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                            "WHERE i.inhparent = 'events'::regclass ORDER BY 1")]
    return names


# ---- row-level security ------------------------------------------------------------------


@pytest.fixture
def two_projects(store):
    t = now_ms() - 3_600_000
    ingest(store, [event(ts=t, user="a1", session_id="sa", ok=False, error_type="E"), event(ts=t + 1, user="a2")], "a")
    ingest(store, [event(ts=t, user="b1", session_id="sb", ok=False, error_type="E")] * 1 + [event(ts=t + i) for i in range(1, 5)], "b")
    a, b = store.project_by_name("a"), store.project_by_name("b")
    store.ingest_measurements(a.id, [("m1", "weblab", "queue", "gauge", "{}", t, 1.0)])
    store.ingest_measurements(b.id, [("m1", "weblab", "queue", "gauge", "{}", t, 2.0), ("m2", "weblab", "queue", "gauge", "{}", t, 3.0)])
    store.ingest_server_events(a.id, [("s1", "weblab", "deploy", t, "1.0", None, None)])
    store.ingest_server_events(b.id, [("s1", "weblab", "deploy", t, "1.0", None, None), ("s2", "weblab", "restart", t, None, None, None)])
    return store, a, b


@postgres_only
def test_a_read_for_one_project_cannot_see_another_even_without_a_project_condition(two_projects):
    store, a, b = two_projects
    for table in ISOLATED:
        with store.reading(a.id) as conn:
            seen_by_a = {p for (p,) in conn.execute(f"SELECT DISTINCT project_id FROM {table}")}  # no WHERE at all
        with store.reading(b.id) as conn:
            seen_by_b = {p for (p,) in conn.execute(f"SELECT DISTINCT project_id FROM {table}")}
        assert seen_by_a == {a.id} and seen_by_b == {b.id}, table
    with store.reading(a.id) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 2
        assert conn.execute("SELECT count(*) FROM events WHERE project_id = %s", (b.id,)).fetchone()[0] == 0
    with store.reading(b.id) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 5


@postgres_only
def test_a_read_without_a_project_sees_nothing_and_reads_cannot_write(two_projects):
    store, a, _ = two_projects
    with store._connection() as conn, conn.transaction():
        conn.execute("SET LOCAL ROLE mcpmeter_reader")  # the role, but no project set
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM rollup_day").fetchone()[0] == 0
    with pytest.raises(StorageError):
        with store.reading(a.id) as conn:
            conn.execute("DELETE FROM events")
    with pytest.raises(StorageError, match="permission denied"):  # partitions are reachable only through events
        with store.reading(a.id) as conn:
            conn.execute(f"SELECT count(*) FROM {name_of(now_ms() - now_ms() % DAY_MS)}")
    with pytest.raises(StorageError, match="permission denied"):  # keys are not project data a reader needs
        with store.reading(a.id) as conn:
            conn.execute("SELECT count(*) FROM api_keys")
    assert store.count_events(everything(store, "a")) == 2


# ---- schema --------------------------------------------------------------------------------


def test_postgres_migrations_are_the_sqlite_migrations_one_for_one():
    assert [(m.version, m.name) for m in PG_MIGRATIONS] == [(m.version, m.name) for m in SQLITE_MIGRATIONS], (
        "a SQLite migration needs its PostgreSQL counterpart in storage/postgres_migrations.py")


@postgres_only
def test_downgrade_to_zero_removes_everything_and_upgrade_restores_it(store):
    ingest(store, [event()])
    assert store.downgrade(0) == [m.version for m in reversed(PG_MIGRATIONS)]
    assert store.schema_version() == 0
    with psycopg.connect(store._pool.conninfo) as conn:
        left = {n for (n,) in conn.execute("SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                           "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'S', 'v', 'm')")}
        functions = conn.execute("SELECT count(*) FROM pg_proc WHERE proname LIKE 'mcpmeter%%'").fetchone()[0]
    assert left == {"schema_migrations"} and functions == 0
    assert store.downgrade(0) == []
    assert store.upgrade() == [m.version for m in PG_MIGRATIONS]
    assert stored_count(store) == 0
    ingest(store, [event()])
    assert stored_count(store) == 1


@postgres_only
def test_a_store_from_a_newer_mcpmeter_is_refused_with_a_hint(store):
    with psycopg.connect(store._pool.conninfo, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (%s, 'future', 0)", (LATEST + 5,))
    with pytest.raises(SchemaVersionError) as info:
        store.upgrade()
    assert f"schema version {LATEST + 5}" in str(info.value)
    assert "upgrade mcpmeter" in info.value.hint


def test_collectors_starting_together_migrate_once(pg_dsn):
    """Eight processes' worth of open_store on an empty database at the same moment."""
    barrier = threading.Barrier(8)
    opened, failures = [], []

    def start() -> None:
        barrier.wait()
        try:
            opened.append(open_store(pg_dsn))
        except Exception as exc:
            failures.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not failures
        with psycopg.connect(pg_dsn) as conn:
            assert conn.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall() == [(m.version,) for m in PG_MIGRATIONS]
        ingest(opened[0], [event()])
        assert stored_count(opened[-1]) == 1
    finally:
        for s in opened:
            s.close()


def test_an_unreachable_server_is_a_storage_error_with_a_hint():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
        with pytest.raises(StorageError) as info:
            open_store(f"postgresql://mcpmeter:secret@127.0.0.1:{port}/nowhere")
    assert info.value.hint and "secret" not in str(info.value)


def test_the_url_shown_never_carries_the_password():
    assert redact("postgresql://app:s3cret@db:5432/x") == "postgresql://app:***@db:5432/x"
    assert redact("postgresql://db/x?options=-csearch_path%3Dm") == "postgresql://db/x?options=-csearch_path%3Dm"


# ---- partitions and retention ----------------------------------------------------------------


@postgres_only
def test_raw_events_live_in_daily_partitions_and_whole_days_are_dropped(store):
    url = store._pool.conninfo
    today = now_ms() - now_ms() % DAY_MS
    days = [today - k * DAY_MS for k in (10, 9, 8, 0)]
    sent = [event(ts=d + 3_600_000 + i, user=f"u{i}") for d in days for i in range(3)]
    assert tuple(ingest(store, sent)) == (12, 0)
    names = partition_days(url)
    assert {name_of(d) for d in days} <= set(names)
    assert name_of(today + 7 * DAY_MS) in names  # created ahead

    removed = store.prune(today - 8 * DAY_MS, 0)  # a day-aligned cut: two whole days go
    assert removed["events"] == 6
    assert name_of(days[0]) not in partition_days(url) and name_of(days[1]) not in partition_days(url)
    assert name_of(days[2]) in partition_days(url)
    assert stored_count(store) == 6

    removed = store.prune(days[2] + 3_600_000 + 2, 0)  # a cut inside a day: the older rows of that day go
    assert removed["events"] == 2 and stored_count(store) == 4

    # As in SQLite: a pruned event is gone for good, so the same id arriving again is new.
    again = ingest(store, sent[:3])
    assert tuple(again) == (3, 0) and name_of(days[0]) in partition_days(url)
    assert store.prune(0, 0)["events"] == 0


@postgres_only
def test_an_ingest_after_a_partition_was_dropped_elsewhere_recreates_it(store):
    other = open_store(store._pool.conninfo)
    try:
        old = now_ms() - 5 * DAY_MS
        ingest(store, [event(ts=old)])
        assert other.prune(old - old % DAY_MS + DAY_MS, 0)["events"] == 1  # `store` still believes the day exists
        assert tuple(ingest(store, [event(ts=old + 1)])) == (1, 0)
        assert stored_count(other) == 1
    finally:
        other.close()


# ---- concurrency -----------------------------------------------------------------------------


@postgres_only
def test_concurrent_stores_writing_overlapping_batches_count_every_event_once(store, tmp_path):
    """Four connections pools (as four collectors) write the same events in different
    orders at once: ids are stored once and every rollup equals a single writer's."""
    url = store._pool.conninfo
    now = now_ms()
    events = generate(11, now, sessions=120, users=15)
    reference = open_store(str(tmp_path / "ref.db"), durable=False)
    writers = [open_store(url) for _ in range(4)]
    try:
        project = store.ensure_project("default")
        good, rejected = decode_batch(json.dumps(events).encode(), Limits(max_events=100_000), now_ms=now)
        assert not rejected
        rows = rows_for(project, good)
        failures = []

        def write(k: int) -> None:
            rng = random.Random(k)
            mine = rows[:]
            rng.shuffle(mine)
            try:
                for start in range(0, len(mine), 97):
                    writers[k].ingest([(project.id, mine[start:start + 97]), (project.id, mine[start:start + 50])])
            except Exception as exc:
                failures.append(exc)

        threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures
        assert stored_count(store) == len(rows)
        ref_project = reference.ensure_project("default")
        reference.ingest([(ref_project.id, rows_for(ref_project, good))])
        assert_same_answers(reference, store, ref_project.id, project.id, now, compare_users=False)
    finally:
        for w in writers:
            w.close()
        reference.close()


# ---- what ingest knows is stored (postgres_rollups.Known) -----------------------------------

KNOWN_TABLES = ("user_day", "user_hour", "session_tools", "user_first", "user_number")  # rows ingest may skip


def _known_rows(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in KNOWN_TABLES}


def _calls(n: int) -> list[dict]:
    """Calls by two users in two sessions with three tools, ten minutes ago (new ids each time)."""
    ts = now_ms() - 600_000
    return [event(ts=ts + i, user=f"u{i % 2}", session_id=f"s{i % 2}", tool=f"t{i % 3}") for i in range(n)]


@postgres_only
@pytest.mark.parametrize("removal", ["prune", "erasure"])
@pytest.mark.parametrize("who", ["another collector", "the same store"])
def test_rollup_rows_removed_by_a_prune_or_an_erasure_are_stored_again_by_the_next_ingest(store, who, removal):
    """Ingest skips the user and session-tool rows it stored before; a prune or an erasure (by
    this store or by another collector on the database) removes them, and the next ingest of
    the same users must add them back."""
    url = store._pool.conninfo
    ingest(store, _calls(12))
    ingest(store, _calls(12))  # skips what the first stored
    before = _known_rows(url)
    assert all(before.values()), before
    other = open_store(url) if who == "another collector" else store
    try:
        if removal == "prune":
            future = now_ms() + DAY_MS
            other.prune(raw_before_ms=future, rollups_before_ms=future)
        else:
            project = store.project_by_name("default")
            with psycopg.connect(url) as conn:
                users = [u for (u,) in conn.execute("SELECT user_hash FROM user_number")]
            for user in users:
                other.delete_user(project.id, user)
        assert _known_rows(url)["user_day"] == 0
        ingest(store, _calls(12))
        assert _known_rows(url) == before
    finally:
        if other is not store:
            other.close()


def _session_cells(url: str) -> tuple[list[tuple], list[tuple]]:
    with psycopg.connect(url) as conn:
        return (sorted(conn.execute("SELECT day, server, client, client_version, protocol_version, sessions FROM session_day")),
                sorted(conn.execute("SELECT day, server, tool, client, client_version, protocol_version, sessions "
                                    "FROM session_tool_day")))


def _rebuilt_session_cells(events: list[dict]) -> tuple[list[tuple], list[tuple]]:
    """The session cells of ``events`` (each session names its client at most once)."""
    sessions: dict[str, dict] = {}
    for e in events:
        s = sessions.setdefault(e["session_id"], {"first": e["ts"], "server": e["server"], "tools": set()})
        s["first"] = min(s["first"], e["ts"])
        for name in ("client_name", "client_version", "protocol_version"):
            if e.get(name):
                assert s.get(name, e[name]) == e[name]
                s[name] = e[name]
        if e["kind"] == "tool_call":
            s["tools"].add(e["tool"])
    days: dict[tuple, int] = {}
    tool_days: dict[tuple, int] = {}
    for s in sessions.values():
        names = tuple(s.get(n, "") for n in ("client_name", "client_version", "protocol_version"))
        day = s["first"] - s["first"] % DAY_MS
        days[(day, s["server"], *names)] = days.get((day, s["server"], *names), 0) + 1
        for tool in s["tools"]:
            key = (day, s["server"], tool, *names)
            tool_days[key] = tool_days.get(key, 0) + 1
    return sorted((*k, n) for k, n in days.items()), sorted((*k, n) for k, n in tool_days.items())


@postgres_only
def test_a_session_another_collector_moved_moves_right_when_this_one_knows_it(store):
    """Store A skips reading a session it stored before when its new events cannot move it
    (Known.sessions); store B moves that session meanwhile (an earlier handshake that names
    its client), then A brings events that stay, a new tool, an earlier start, a client: the
    daily session cells must be those of all the events, whichever store brought each."""
    url = store._pool.conninfo
    now = now_ms()
    day = now - now % DAY_MS - 10 * DAY_MS
    named = {"client_name": "claude-code", "client_version": "2.0", "protocol_version": "2025-11-25"}

    def call(sid: str, ts: int, tool: str = "t0", **more) -> dict:
        return event(kind="tool_call", ts=ts, session_id=sid, tool=tool, user="u1", **more)

    other = open_store(url)
    sent: list[dict] = []
    try:
        steps = [
            (store, [call("x", day + 2 * DAY_MS + 5000), call("y", day + 3 * DAY_MS)]),
            (other, [event(kind="initialize", ts=day + DAY_MS + 7000, session_id="x", tool=None, duration_ms=None, ok=None, **named),
                     call("z", day + 4 * DAY_MS, client_name="cursor")]),
            (store, [call("x", day + 2 * DAY_MS + 20_000), call("y", day + 3 * DAY_MS + 500)]),  # nothing moves
            (store, [call("x", day + 2 * DAY_MS + 30_000, tool="t1")]),  # a tool it had not called
            (store, [event(kind="list_tools", ts=day + 500, session_id="x", tool=None, duration_ms=None, ok=None)]),  # a day earlier
            (store, [call("y", day + 3 * DAY_MS + 1000, client_name="cursor")]),  # its client, unknown so far
            (store, [call("z", day + 4 * DAY_MS + 1000, tool="t2"), call("z", day + 4 * DAY_MS + 2000, tool="t2")]),
            (other, [call("x", day + 2 * DAY_MS + 40_000, tool="t1"), call("y", day + 2 * DAY_MS)]),
            (store, [call("x", day + 2 * DAY_MS + 50_000, tool="t1"), call("y", day + 3 * DAY_MS + 2000)]),
        ]
        for i, (writer, batch) in enumerate(steps):
            ingest(writer, batch, now=now)
            sent += batch
            assert _session_cells(url) == _rebuilt_session_cells(sent), f"after step {i}"
        project = store.project_by_name("default").id
        assert {(project, "x"), (project, "y"), (project, "z")} <= set(store._known.sessions)
    finally:
        other.close()


# ---- the same answers as SQLite ----------------------------------------------------------------


def _canonical(rows: list[tuple]) -> list[tuple]:
    out = []
    for row in rows:
        row = tuple(histogram.decode(v) if isinstance(v, bytes) else v for v in row)
        out.append(tuple(round(v, 6) if isinstance(v, float) else v for v in row))
    return sorted(out, key=repr)


def assert_same_answers(a, b, pa: int, pb: int, now: int, compare_users: bool = True) -> None:
    """Every read of the Store protocol gives the same rows on both stores."""
    day, hour = now - now % DAY_MS, now - now % 3_600_000
    windows = [(0, 1 << 62, "day"), (day - 30 * DAY_MS, day + DAY_MS, "day"), (hour - 30 * 3_600_000, hour + 3_600_000, "hour")]
    filters = [{}, {"server": "weblab"}, {"tool": "search"}, {"client": "cursor"}, {"server": "weblab", "tool": "details", "client": "claude-code"}]
    for start, end, grain in windows:
        for extra in filters:
            fa, fb = EventFilter(pa, start, end, **extra), EventFilter(pb, start, end, **extra)
            for read in ("count_events", "distinct_users", "error_groups", "sessions", "measurement_days", "server_events"):
                assert _canonical(_rows(getattr(a, read)(fa))) == _canonical(_rows(getattr(b, read)(fb))), (read, extra, grain)
            assert a.recent_errors(fa, 50) == b.recent_errors(fb, 50), extra
            assert _canonical(a.cells(fa, grain, ("tool_call", "list_tools"))) == _canonical(b.cells(fb, grain, ("tool_call", "list_tools")))
            for group in [(), ("bucket",), ("server", "tool"), ("client",)]:
                assert _canonical(a.users(fa, grain, group)) == _canonical(b.users(fb, grain, group)), (group, extra)
            assert a.new_users(fa, grain) == b.new_users(fb, grain), extra
    for server in (None, "weblab"):
        assert a.catalog(pa, server) == b.catalog(pb, server)
        assert _canonical(a.last_calls(pa, server)) == _canonical(b.last_calls(pb, server))
    skip = ROW_FIELDS.index("user_hash") + 1
    exported_a = [r[1:skip] + r[skip + 1:] for r in a.export_events(pa, 0, 1_000_000)]
    exported_b = [r[1:skip] + r[skip + 1:] for r in b.export_events(pb, 0, 1_000_000)]
    assert sorted(exported_a, key=repr) == sorted(exported_b, key=repr)
    if compare_users:
        assert [r[skip] is None for r in a.export_events(pa, 0, 1_000_000)] == [r[skip] is None for r in b.export_events(pb, 0, 1_000_000)]


def _rows(value) -> list[tuple]:
    return value if isinstance(value, list) else [(value,)]


def test_both_backends_answer_every_read_the_same(tmp_path, pg_dsn):
    now = now_ms()
    events = generate(5, now, sessions=250, users=20)
    stores = [open_store(str(tmp_path / "s.db"), durable=False), open_store(pg_dsn, durable=False)]
    try:
        rng = random.Random(3)
        for s in stores:
            p = s.ensure_project("default")
            rng.seed(3)
            for start in range(0, len(events), 300):
                batch = events[start:start + 300 + rng.randrange(0, 100)]  # overlapping: retries
                ingest(s, batch, now=now)
            s.ingest_measurements(p.id, [(f"m{i}", "weblab", "latency", "timer", "{}", now - i * 600_000, float(i)) for i in range(50)])
            s.ingest_server_events(p.id, [(f"d{i}", "weblab", "deploy", now - i * 7_200_000, str(i), "m", None) for i in range(5)])
        sqlite_store, pg_store = stores
        pid = [s.project_by_name("default").id for s in stores]
        assert_same_answers(sqlite_store, pg_store, pid[0], pid[1], now)
        assert sqlite_store.prune(now - 20 * DAY_MS, now - 40 * DAY_MS) == pg_store.prune(now - 20 * DAY_MS, now - 40 * DAY_MS)
        assert_same_answers(sqlite_store, pg_store, pid[0], pid[1], now)
    finally:
        for s in stores:
            s.close()


def test_a_store_with_events_from_before_the_rollups_is_right_after_upgrading(tmp_path, pg_dsn):
    """Schema 1 held raw events only; the upgrade to 2 builds the rollups from them."""
    now = now_ms()
    events = generate(8, now, sessions=120, users=10)
    reference = open_store(str(tmp_path / "ref.db"), durable=False)
    old = open_store(pg_dsn, upgrade=False)
    try:
        assert old.upgrade(1) == [1]
        ref_project, project = reference.ensure_project("default"), old.ensure_project("default")
        good, _ = decode_batch(json.dumps(events).encode(), Limits(max_events=100_000), now_ms=now)
        reference.ingest([(ref_project.id, rows_for(ref_project, good))])
        rows = rows_for(project, good)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:  # what schema 1 wrote: raw events and their ids
            from mcpmeter.storage import postgres_partitions

            with conn.transaction():
                postgres_partitions.create(conn, {r[2] - r[2] % DAY_MS for r in rows}, now)
            with conn.cursor().copy(f"COPY events (project_id, {', '.join(ROW_FIELDS)}, received_at) FROM STDIN") as copy:
                for r in rows:
                    copy.write_row((project.id, *r, now))
            with conn.cursor().copy("COPY event_ids (project_id, event_id, ts) FROM STDIN") as copy:
                for r in rows:
                    copy.write_row((project.id, r[0], r[2]))
        assert old.upgrade() == [m.version for m in PG_MIGRATIONS if m.version >= 2]
        assert_same_answers(reference, old, ref_project.id, project.id, now, compare_users=False)
    finally:
        old.close()
        reference.close()


@postgres_only
def test_histograms_merge_by_adding_bins_in_sql(store):
    with store._connection() as conn:
        merged = conn.execute("SELECT mcpmeter_hist_merge('{\"1\": 2, \"7\": 1}', '{\"1\": 3, \"40\": 5}')").fetchone()[0]
        assert merged == {"1": 5, "7": 1, "40": 5}
        assert conn.execute("SELECT mcpmeter_hist_merge(NULL, '{\"2\": 1}')").fetchone()[0] == {"2": 1}


@postgres_only
def test_users_are_stored_only_as_keyed_hashes(store):
    ingest(store, [event(user="alice@example.com")], "a")
    with psycopg.connect(store._pool.conninfo) as conn:
        for table in ISOLATED:
            assert conn.execute(f"SELECT count(*) FROM {table} t WHERE t::text LIKE '%%alice%%'").fetchone()[0] == 0, table


@postgres_only
def test_collectors_starting_together_can_replace_the_same_key(store):
    """As register_env_keys does for MCPMETER_API_KEY_<NAME> in every collector at start."""
    others = [open_store(store._pool.conninfo) for _ in range(3)]
    try:
        project = store.ensure_project("default")
        barrier, failures = threading.Barrier(4), []

        def replace(s) -> None:
            barrier.wait()
            try:
                s.add_key(project.id, "ci", "hash-of-the-key", "mcpm_abc", ["ingest"], replace=True)
            except StorageError as exc:
                failures.append(exc)

        threads = [threading.Thread(target=replace, args=(s,)) for s in [store, *others]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures
        assert [k.name for k in store.list_keys(project.id)] == ["ci"]
    finally:
        for s in others:
            s.close()

"""The store contract: every query of the Store protocol, asked of SQLite and PostgreSQL
loaded with the same data, gives the same answer, ordering included.

Kinto's ``StorageTest`` idea: one suite, every backend. The data holds ties on purpose
(failed calls in the same millisecond, sessions that start together, server events at the
same time, a LIMIT that cuts through them), where an ORDER BY without a unique tie-break
lets the backends answer differently.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from foundation_helpers import now_ms
from mcpmeter import histogram
from mcpmeter.events import ROW_FIELDS, Limits, decode_batch
from mcpmeter.exceptions import StorageError
from mcpmeter.ingest import rows_for
from mcpmeter.storage.base import AuditEntry, EventFilter, Store
from store_backends import both_stores

DAY_MS, HOUR_MS = 86_400_000, 3_600_000


def _audit(action: str, target: str, ts: int) -> AuditEntry:
    return AuditEntry(ts, None, None, "os:test", action, target, None, "cli")


def _load(store: Store, now: int) -> dict[str, int]:
    """The same projects, keys, grants, audit entries, events, measurements and server events."""
    ids = {}
    for name in ("default", "other"):
        ids[name] = store.ensure_project(name, audit=_audit("project.create", name, now)).id
    p = ids["default"]
    store.add_key(p, "ci", "hash-ci", "mcpm_ci", ["ingest"], audit=_audit("key.create", "ci", now))
    store.add_key(p, "dash", "hash-dash", "mcpm_da", ["read", "ingest"], expires_at=now + DAY_MS)
    store.add_key(ids["other"], "ci", "hash-other", "mcpm_ot", ["ingest"])
    store.revoke_key(p, "dash", audit=_audit("key.revoke", "dash", now + 1))
    store.grant_access(p, "oidc:bob", "viewer", audit=_audit("access.grant", "oidc:bob", now + 2))
    store.grant_access(ids["other"], "oidc:ann", "admin")
    store.grant_access(p, "oidc:ann", "admin")
    store.touch_keys({1: now + 5})

    tie = now - now % HOUR_MS - HOUR_MS + 1234  # one millisecond shared by many events
    events: list[dict[str, Any]] = []
    for i in range(6):  # failed calls at the same time, in several sessions that start together
        events.append({"id": f"err-{i}", "kind": "tool_call", "ts": tie, "server": "weblab", "tool": f"t{i % 3}",
                       "duration_ms": 1.5 * (i + 1), "ok": False, "error_type": "Boom" if i % 2 else "Timeout",
                       "error_message": f"failure {i}", "session_id": f"s-{'bac'[i % 3]}", "client_name": "cursor",
                       "user": f"u{i % 4}"})
    for i in range(40):  # calls on other hours and days, other clients and servers
        events.append({"id": f"ok-{i}", "kind": "tool_call", "ts": now - (i % 7) * DAY_MS - (i % 5) * HOUR_MS,
                       "server": "weblab" if i % 3 else "docs", "tool": f"t{i % 4}", "duration_ms": 0.25 * i + 0.01,
                       "ok": i % 9 != 0, "error_type": None if i % 9 else "Denied", "session_id": f"s-{i % 6}",
                       "client_name": ("cursor", "claude-code", None)[i % 3], "client_version": "1.0",
                       "protocol_version": "2025-06-18", "transport": "stdio", "user": f"u{i % 5}"})
    events.append({"id": "init-1", "kind": "initialize", "ts": tie, "server": "weblab", "session_id": "s-a"})
    events.append({"id": "list-1", "kind": "tool_listed", "ts": tie, "server": "weblab", "tool": "t9", "result_bytes": 300})
    for i in range(8):  # categories (one tool's changes), outcome classes, usage actions, sessionless visitors
        events.append({"id": f"cat-{i}", "kind": "tool_call", "ts": tie + i, "server": "weblab", "tool": f"t{i % 3}",
                       "category": ("read", "write", "Read")[i % 3] if i % 4 else None, "user": f"u{i % 3}",
                       "ok": None if i == 5 else i % 2 == 0, "error_type": {1: "invalid_params", 3: "server_exited", 5: "cancelled",
                                                                            7: "tool_error"}.get(i),
                       "attributes": {"mcp.outcome": {1: "caller_error", 3: "server_error", 5: "cancelled"}.get(i, "ok")}
                       if i % 2 else None})
        events.append({"id": f"act-{i}", "kind": ("page_view", "installation")[i % 2], "ts": tie - i * HOUR_MS,
                       "server": ("weblab", "docs")[i % 2], "user": f"u{i % 3}"})
        events.append({"id": f"probe-{i}", "kind": ("initialize", "list_tools")[i % 2], "ts": tie + i,
                       "server": "weblab", "user": f"p{i // 2}", "client_name": ("bot", "Bot", None)[i % 3]})
    yesterday = now - now % DAY_MS - DAY_MS  # a session that starts the day before its first call
    events.append({"id": "x-init", "kind": "initialize", "ts": yesterday - 1000, "server": "weblab", "session_id": "s-x",
                   "client_name": "cursor", "client_version": "2.0", "protocol_version": "2025-11-25"})
    events.append({"id": "x-call", "kind": "tool_call", "ts": yesterday + 1000, "server": "weblab", "tool": "t1", "ok": True,
                   "session_id": "s-x", "client_name": "cursor", "user": "u1"})
    project = store.project_by_id(p)
    assert project is not None
    late = [{"id": "late-init", "kind": "initialize", "ts": now - 6 * DAY_MS - 5000, "server": "weblab", "session_id": "s-1",
             "client_name": "zed", "protocol_version": "2024-11-05"}]  # after the rest: s-1 starts earlier
    for batch in (events, late):
        valid, rejected = decode_batch(json.dumps(batch).encode(), Limits(max_events=10_000), now_ms=now)
        assert not rejected, rejected
        store.ingest([(p, rows_for(project, valid))])
    store.ingest_measurements(p, [(f"m{i}", "weblab", "latency", "timer", "{}", now - i * 600_000, float(i)) for i in range(30)]
                             + [(f"q{i}", ("weblab", "docs")[i % 2], "queue", "gauge", '{"region":"eu"}', tie - i * 1_800_000,
                                 float(i % 4)) for i in range(30)])
    store.ingest_server_events(p, [(f"d-{c}", "weblab", "deploy", tie, c, "m", None) for c in "cab"]
                                  + [(f"d-{i}", "docs", "restart", now - i * HOUR_MS, str(i), None, None) for i in range(4)])
    return ids


def _plain(value: Any) -> Any:
    """One answer in a form both backends share: histograms as maps, floats rounded."""
    if isinstance(value, bytes):
        return histogram.decode(value)
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, (list, set, frozenset)):
        return type(value)(_plain(v) for v in value) if not isinstance(value, frozenset) else value
    return value


def _unordered(rows: list) -> list:
    return sorted((_plain(r) for r in rows), key=repr)


def _queries(now: int) -> dict[str, tuple[Callable[[Store, dict[str, int]], Any], bool]]:
    """Every read, by name: (ask, whether its order is part of the answer)."""
    day, hour = now - now % DAY_MS, now - now % HOUR_MS
    windows = {"all": (0, 1 << 62, "day"), "month": (day - 30 * DAY_MS, day + DAY_MS, "day"),
               "hours": (hour - 30 * HOUR_MS, hour + HOUR_MS, "hour")}
    filters = [{}, {"server": "weblab"}, {"tool": "t1"}, {"client": "cursor"}, {"server": "weblab", "tool": "t0", "client": "cursor"},
               {"category": "read"}, {"server": "weblab", "category": "Read"}]
    out: dict[str, tuple[Callable[[Store, dict[str, int]], Any], bool]] = {}

    def add(name: str, ask: Callable[[Store, dict[str, int]], Any], ordered: bool) -> None:
        out[name] = (ask, ordered)

    for wname, (start, end, grain) in windows.items():
        for i, extra in enumerate(filters):
            def f(ids: dict[str, int], start=start, end=end, extra=extra) -> EventFilter:
                return EventFilter(ids["default"], start, end, **extra)

            tag = f"{wname}/{i}"
            add(f"count_events {tag}", lambda s, ids, f=f: s.count_events(f(ids)), True)
            add(f"count_events(any kind) {tag}", lambda s, ids, f=f: s.count_events(f(ids), kind=None), True)
            add(f"distinct_users {tag}", lambda s, ids, f=f: s.distinct_users(f(ids)), True)
            for limit in (3, 50):
                add(f"recent_errors[{limit}] {tag}", lambda s, ids, f=f, limit=limit: s.recent_errors(f(ids), limit), True)
                add(f"sessions[{limit}] {tag}", lambda s, ids, f=f, limit=limit: s.sessions(f(ids), limit), True)
                add(f"server_events[{limit}] {tag}", lambda s, ids, f=f, limit=limit: s.server_events(f(ids), limit), True)
            add(f"session_counts {tag}", lambda s, ids, f=f: s.session_counts(f(ids)), False)
            add(f"error_groups {tag}", lambda s, ids, f=f: s.error_groups(f(ids)), True)
            add(f"measurement_days {tag}", lambda s, ids, f=f: s.measurement_days(f(ids)), True)
            add(f"measurement_days(name) {tag}", lambda s, ids, f=f: s.measurement_days(f(ids), "latency"), True)
            add(f"cells {tag}", lambda s, ids, f=f, g=grain: s.cells(f(ids), g, ("tool_call", "initialize")), False)
            add(f"tool_cells {tag}", lambda s, ids, f=f, g=grain: s.tool_cells(f(ids), g), False)
            add(f"tool_cells(counts) {tag}", lambda s, ids, f=f, g=grain: s.tool_cells(f(ids), g, latency=False), False)
            add(f"client_counts {tag}", lambda s, ids, f=f, g=grain: s.client_counts(f(ids), g), False)
            for group in [(), ("bucket",), ("server", "tool"), ("client",)]:
                add(f"users{group} {tag}", lambda s, ids, f=f, g=grain, group=group: s.users(f(ids), g, group), False)
            add(f"new_users {tag}", lambda s, ids, f=f, g=grain: s.new_users(f(ids), g), True)
            add(f"new_users_by_bucket {tag}", lambda s, ids, f=f, g=grain: s.new_users_by_bucket(f(ids), g), True)
            add(f"category_users {tag}", lambda s, ids, f=f, g=grain: s.category_users(f(ids), g), False)
            add(f"action_counts {tag}", lambda s, ids, f=f, g=grain: s.action_counts(f(ids), g), False)
            add(f"action_users {tag}", lambda s, ids, f=f, g=grain: s.action_users(f(ids), g), False)
            add(f"activation {tag}", lambda s, ids, f=f: s.activation(f(ids)), False)
            for names in ((), ("queue",), ("queue", "latency")):
                add(f"measurement_buckets{names} {tag}",
                    lambda s, ids, f=f, g=grain, names=names: s.measurement_buckets(f(ids), names, g), True)
    for server in (None, "weblab"):
        add(f"catalog {server}", lambda s, ids, server=server: s.catalog(ids["default"], server), True)
        add(f"last_calls {server}", lambda s, ids, server=server: s.last_calls(ids["default"], server), True)
        add(f"tool_catalog {server}", lambda s, ids, server=server: s.tool_catalog(ids["default"], server), True)
    skip = ROW_FIELDS.index("user_hash") + 1  # user hashes are keyed by each store's own salt
    add("export_events", lambda s, ids: [r[1:skip] + r[skip + 1:] for r in s.export_events(ids["default"], 0, 1000)], True)
    add("export_events[page]", lambda s, ids: [r[1:skip] + r[skip + 1:] for r in s.export_events(
        ids["default"], s.export_events(ids["default"], 0, 10)[-1][0], 10)], True)
    add("list_projects", lambda s, ids: [(p.id, p.name) for p in s.list_projects()], True)
    add("project_by_name", lambda s, ids: s.project_by_name("other")[:2], True)  # type: ignore[index]
    add("project_by_id", lambda s, ids: s.project_by_id(ids["other"])[:2], True)  # type: ignore[index]
    keys = lambda found: [(k.id, k.project, k.name, k.prefix, k.scopes, k.revoked_at is not None, k.expires_at,  # noqa: E731
                           k.last_used_at) for k in found]
    add("list_keys", lambda s, ids: keys(s.list_keys()), True)
    add("list_keys(project)", lambda s, ids: keys(s.list_keys(ids["default"])), True)
    add("key_by_hash", lambda s, ids: keys([s.key_by_hash("hash-ci")]), True)
    add("audit_entries", lambda s, ids: s.audit_entries(), True)
    add("audit_entries(project)", lambda s, ids: s.audit_entries(ids["default"], limit=2), True)
    add("access_for", lambda s, ids: s.access_for(["oidc:ann", "oidc:bob"]), True)
    add("list_access", lambda s, ids: [r[:3] for r in s.list_access()], True)
    add("known_names", lambda s, ids: s.known_names(ids["default"]), True)
    add("keys_version", lambda s, ids: s.keys_version() > 0, True)
    return out


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Any, bool]]:
    """Every query's answer on SQLite and on PostgreSQL, for the same data."""
    now = now_ms()
    queries = _queries(now)
    with both_stores(tmp_path_factory.mktemp("contract")) as stores:
        ids = [_load(s, now) for s in stores]
        assert ids[0] == ids[1]
        found = {name: (ask(stores[0], ids[0]), ask(stores[1], ids[1]), ordered) for name, (ask, ordered) in queries.items()}
        user = ROW_FIELDS.index("user_hash") + 1
        erased = [s.delete_user(i["default"], next(r[user] for r in s.export_events(i["default"], 0, 1000) if r[1] == "x-call"))
                  for s, i in zip(stores, ids)]
        found["erase"] = (erased[0], erased[1], True)
        found.update({f"after erase: {name}": (ask(stores[0], ids[0]), ask(stores[1], ids[1]), ordered)
                      for name, (ask, ordered) in queries.items()})
        prune = [s.prune(now - 3 * DAY_MS, now - 5 * DAY_MS) for s in stores]
        found["prune"] = (prune[0], prune[1], True)
        found.update({f"after prune: {name}": (ask(stores[0], ids[0]), ask(stores[1], ids[1]), ordered)
                      for name, (ask, ordered) in queries.items()})
    return found


@pytest.mark.parametrize("name", list(_queries(0)) + ["erase", "prune"] + [f"after {step}: {n}" for step in ("erase", "prune")
                                                                            for n in _queries(0)])
def test_both_backends_give_the_same_answer(answers, name):
    sqlite_answer, pg_answer, ordered = answers[name]
    if ordered:
        assert _plain(sqlite_answer) == _plain(pg_answer)
    else:
        assert _unordered(sqlite_answer) == _unordered(pg_answer)


def test_ties_are_broken_the_same_documented_way(answers):
    """Where rows tie on the ORDER BY column, the order is the one the Store protocol states."""
    errors = answers["recent_errors[50] all/0"][0]
    tie = [e for e in errors if e[0] == errors[-1][0] or (e[5] and e[5].startswith("failure"))]
    assert [e[5] for e in tie if e[5] and e[5].startswith("failure")] == [f"failure {i}" for i in range(5, -1, -1)]  # later stored first
    assert answers["recent_errors[3] all/0"][0] == errors[:3]  # the LIMIT cuts the same ordered list
    sessions = answers["sessions[50] hours/0"][0]
    assert sessions == sorted(sessions, key=lambda s: (s[6], s[0]))
    assert [s[0] for s in sessions if s[0] in ("s-a", "s-b", "s-c")] == ["s-a", "s-b", "s-c"]  # same start: by id, not arrival
    assert answers["sessions[3] hours/0"][0] == sessions[:3]
    events = answers["server_events[50] hours/1"][0]
    assert [e[3] for e in events[:3]] == ["a", "b", "c"]  # same ts: by event id, not arrival


def test_the_protocol_is_complete_on_both_backends(tmp_path):
    """What callers use is declared on ``Store`` and present on both: no sniffing for it."""
    wanted = [name for name in dir(Store) if not name.startswith("_")]
    assert {"session_counts", "size_bytes", "location", "ingest"} <= set(wanted)
    with both_stores(tmp_path) as stores:
        for s in stores:
            missing = [name for name in wanted if not hasattr(s, name)]
            assert not missing, (type(s).__name__, missing)
        sqlite_store, pg_store = stores
        assert sqlite_store.location == str(tmp_path / "contract.db") and sqlite_store.size_bytes() > 0
        assert pg_store.location == pg_store.url and pg_store.size_bytes() is None  # the URL, its password hidden


def test_key_and_project_changes_write_their_audit_entry_in_the_same_transaction(store):
    now = now_ms()
    p = store.ensure_project("audited", audit=_audit("project.create", "audited", now))
    assert store.ensure_project("audited", audit=_audit("project.create", "again", now + 1)) == p  # existed: no entry
    store.add_key(p.id, "ci", "h1", "mcpm_h1", ["ingest"], audit=_audit("key.create", "ci", now + 2))
    assert store.revoke_key(p.id, "nothing-of-that-name", audit=_audit("key.revoke", "x", now + 3)) == 0  # nothing: no entry
    assert store.revoke_key(p.id, "ci", audit=_audit("key.revoke", "ci", now + 4)) == 1
    expected = [("project.create", "audited"), ("key.create", "ci"), ("key.revoke", "ci")]
    entries = store.audit_entries()
    assert [(e.action, e.target) for e in entries] == expected
    assert (entries[0].project_id, entries[0].project) == (p.id, "audited")  # filled in by the creating transaction
    with pytest.raises(StorageError):  # a change that fails leaves no audit entry behind
        store.add_key(p.id, "ci", "h2", "mcpm_h2", ["ingest"], audit=_audit("key.create", "ci", now + 5))
    assert [(e.action, e.target) for e in store.audit_entries()] == expected

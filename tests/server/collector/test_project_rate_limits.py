"""Rate limits per project (MCPMETER_RATE_LIMIT_PER_PROJECT): every key of a project draws on
one budget per fixed minute, counted in the store by every collector of a PostgreSQL database
together (two real `mcpmeter serve` processes on one database), in memory on SQLite."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from conftest import make_keys, start_collector, stop_collector
from foundation_helpers import event, stored_count
from mcpmeter import keys as keylib
from mcpmeter.server.collector import CollectorConfig, create_app
from mcpmeter.server.collector.security import ProjectWindows
from mcpmeter.storage import open_store
from store_backends import store_location

MINUTE_MS = 60_000


def inside_one_minute(seconds_needed: float) -> None:
    """Start a run that must fit in one fixed window well inside it (never astride two minutes)."""
    left = 60 - time.time() % 60
    if left < seconds_needed:
        time.sleep(left + 0.05)


def second_key(store, project: str, scope: str = "ingest") -> str:
    p = store.ensure_project(project)
    key = keylib.new_key()
    store.add_key(p.id, f"{project}-{scope}-2", keylib.hash_key(key), keylib.display_prefix(key), [scope])
    return key


def test_the_store_counts_requests_per_window_atomically(store):
    start = int(time.time() * 1000) // MINUTE_MS * MINUTE_MS
    assert [store.count_request("project:1", start, MINUTE_MS) for _ in range(3)] == [1, 2, 3]
    assert store.count_request("project:2", start, MINUTE_MS) == 1  # another name, its own count
    assert store.count_request("project:1", start + MINUTE_MS, MINUTE_MS) == 1  # the next window starts afresh
    assert store.count_request("project:1", start + 3 * MINUTE_MS, MINUTE_MS) == 1  # and clears the ended ones
    assert store.count_request("project:1", start, MINUTE_MS) == 1
    with ThreadPoolExecutor(4) as pool:  # four callers at once
        counts = list(pool.map(lambda _: store.count_request("project:9", start, MINUTE_MS), range(100)))
    assert sorted(counts) == list(range(1, 101))  # no count given twice, none lost


def test_fixed_windows_in_memory():
    w = ProjectWindows(3)  # no shared store: this process counts
    start = 10 * MINUTE_MS
    assert [w.take(1, start + i) for i in range(3)] == [0.0, 0.0, 0.0]
    assert w.take(1, start + 15_000) == 45.0  # the seconds left in the minute
    assert w.take(2, start + 15_000) == 0.0  # another project
    assert w.take(1, start + MINUTE_MS) == 0.0  # a new minute
    assert w.refused == 1


def config(per_project: int) -> CollectorConfig:
    c = CollectorConfig()
    c.rate_limit_per_key = c.rate_limit_per_ip = 0
    c.rate_limit_per_project = per_project
    return c


def test_every_key_of_a_project_draws_on_one_budget(store):
    keys, other = make_keys(store), make_keys(store, "other")
    extra = second_key(store, "default")
    inside_one_minute(20)
    with TestClient(create_app(store, config(per_project=10))) as c:
        statuses = [c.post("/v1/events", json=[event()], headers={"Authorization": f"Bearer {k}"}).status_code
                    for k in [keys.ingest, extra] * 5]
        assert statuses == [200] * 10
        r = c.get("/v1/usage/summary", headers={"Authorization": f"Bearer {keys.read}"})  # reads count too
        assert r.status_code == 429
        assert "too many requests for project 'default'" in r.json()["error"] and "10 per minute" in r.json()["error"]
        assert "MCPMETER_RATE_LIMIT_PER_PROJECT" in r.json()["hint"]
        assert 1 <= int(r.headers["retry-after"]) <= 60 - int(time.time() % 60) + 1
        assert c.post("/v1/events", json=[event()], headers={"Authorization": f"Bearer {extra}"}).status_code == 429
        # another project is not affected
        assert c.post("/v1/events", json=[event()], headers={"Authorization": f"Bearer {other.ingest}"}).status_code == 200
        checks = c.app.state.collector.auth.check_counts()
        assert checks[("ingest", "rate_limited")] == 1 and checks[("read", "rate_limited")] == 1
    assert stored_count(store) == 11


def test_two_collectors_on_one_postgresql_database_share_the_projects_limit(tmp_path: Path):
    with store_location("postgres", tmp_path) as url:
        store = open_store(url)
        keys, other = make_keys(store), make_keys(store, "other")
        extra = second_key(store, "default")
        store.close()
        env = {"MCPMETER_RATE_LIMIT_PER_PROJECT": "20", "MCPMETER_RATE_LIMIT_PER_KEY": "0", "MCPMETER_LOCAL_TRUST": "false"}
        a = start_collector(url, env=env, log=tmp_path / "a.log")
        b = start_collector(url, env=env, log=tmp_path / "b.log")
        try:
            inside_one_minute(30)
            statuses = []
            for i in range(15):  # 30 requests, alternating collectors and keys: the project may make 20 of them
                for collector, key in ((a, keys.ingest), (b, extra)):
                    r = httpx.post(collector.url + "/v1/events", json=[event(user=f"u{i}")],
                                   headers={"Authorization": f"Bearer {key}"}, timeout=10)
                    statuses.append(r.status_code)
                    if r.status_code == 429:
                        assert "across all collectors" in r.json()["error"] and int(r.headers["retry-after"]) >= 1
            assert statuses.count(200) == 20 and statuses.count(429) == 10
            assert statuses[:20] == [200] * 20  # the first 20, wherever they went
            for collector in (a, b):  # another project has its own budget on both
                r = httpx.post(collector.url + "/v1/events", json=[event()], headers={"Authorization": f"Bearer {other.ingest}"})
                assert r.status_code == 200
            store = open_store(url)
            try:
                assert stored_count(store) == 22
            finally:
                store.close()
        finally:
            stop_collector(a)
            stop_collector(b)


def test_the_limit_is_off_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MCPMETER_RATE_LIMIT_PER_PROJECT", raising=False)
    db = tmp_path / "c.db"
    store = open_store(str(db))
    keys = make_keys(store)
    store.close()
    c = start_collector(db, env={"MCPMETER_RATE_LIMIT_PER_KEY": "0"})
    try:
        assert all(httpx.post(c.url + "/v1/events", json=[event()], headers={"Authorization": f"Bearer {keys.ingest}"}).status_code == 200
                   for _ in range(50))
    finally:
        stop_collector(c)

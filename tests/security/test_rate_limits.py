"""Rate limits per key and per source address: 429 with Retry-After at exactly the configured
rate, and an SDK that meets them backs off and still delivers every event, once."""

from __future__ import annotations

import re

import httpx
from starlette.testclient import TestClient

from conftest import make_keys, start_collector, stop_collector
from foundation_helpers import event, stored_count
from mcpmeter import Meter
from mcpmeter.server.collector import CollectorConfig, create_app
from mcpmeter.server.collector.security import TokenBuckets
from mcpmeter.storage import open_store


def config(per_key: int = 0, per_ip: int = 0) -> CollectorConfig:
    c = CollectorConfig()
    c.rate_limit_per_key, c.rate_limit_per_ip = per_key, per_ip
    return c


def test_the_limit_per_key_is_exact_and_answers_retry_after(store):
    keys = make_keys(store)
    other = make_keys(store, "other")
    with TestClient(create_app(store, config(per_key=30))) as c:
        auth = {"Authorization": f"Bearer {keys.ingest}"}
        statuses = [c.post("/v1/events", json=[event()], headers=auth).status_code for _ in range(31)]
        assert statuses == [200] * 30 + [429]
        r = c.post("/v1/events", json=[event()], headers=auth)
        assert r.status_code == 429
        assert "too many requests with API key" in r.json()["error"] and "30 per minute" in r.json()["error"]
        assert r.json()["hint"]
        assert 1 <= int(r.headers["retry-after"]) <= 2  # 30/min: a token every 2 s
        # another key is not affected, nor reads with another key of the same project
        assert c.post("/v1/events", json=[event()], headers={"Authorization": f"Bearer {other.ingest}"}).status_code == 200
        assert c.get("/v1/usage/summary", headers={"Authorization": f"Bearer {keys.read}"}).status_code == 200
    assert stored_count(store) == 31


def test_the_limit_per_address_comes_before_any_key_lookup(store):
    keys = make_keys(store)
    with TestClient(create_app(store, config(per_ip=5))) as c:
        statuses = [c.get("/v1/usage/summary", headers={"Authorization": "Bearer mcpm_guess"}).status_code for _ in range(6)]
        assert statuses == [401] * 5 + [429]  # guessing keys costs the guesser its budget
        r = c.post("/v1/events", json=[event()], headers={"Authorization": f"Bearer {keys.ingest}"})
        assert r.status_code == 429 and "too many requests from testclient" in r.json()["error"]
        assert int(r.headers["retry-after"]) >= 1
    with TestClient(create_app(store, config(per_ip=5)), client=("127.0.0.1", 5000), base_url="http://127.0.0.1") as c:  # the machine itself
        assert all(c.get("/v1/usage/summary").status_code == 200 for _ in range(10))


def test_token_buckets_refill_at_the_configured_rate():
    buckets = TokenBuckets(60)  # one a second
    assert all(buckets.take("k", now=100.0) == 0.0 for _ in range(60))
    assert buckets.take("k", now=100.0) == 1.0
    assert buckets.take("k", now=100.5) == 0.5
    assert buckets.take("k", now=101.0) == 0.0
    assert buckets.take("k", now=101.0) > 0
    assert buckets.take("k", now=1000.0) == 0.0  # refilled, never beyond capacity
    assert sum(buckets.take("k", now=1000.0) == 0.0 for _ in range(100)) == 59
    small = TokenBuckets(60, max_buckets=10)
    for i in range(25):
        assert small.take(i, now=0.0) == 0.0
    assert len(small._buckets) <= 10


def test_the_sdk_backs_off_on_429_and_delivers_every_event_once(tmp_path):
    db = tmp_path / "collector.db"
    store = open_store(str(db))
    keys = make_keys(store)
    store.close()
    c = start_collector(db, env={"MCPMETER_RATE_LIMIT_PER_KEY": "60"})  # 60 at once, then one a second
    try:
        meter = Meter(server="limited", url=c.url, api_key=keys.ingest, batch_size=1, flush_interval=0.05,
                      spool=tmp_path / "spool.db")
        for i in range(70):
            meter.record("search", duration_ms=float(i))
        assert meter.flush(90)
        assert meter.shutdown(30)
        assert meter.stats.sent == 70 and not meter.stats.dropped and meter.stats.spooled == meter.stats.replayed
        metrics = httpx.get(c.url + "/metrics", headers={"Authorization": f"Bearer {keys.read}"}).text
        limited = re.search(r'mcpmeter_auth_checks_total\{result="rate_limited",scope="ingest"\} (\d+)', metrics) or \
            re.search(r'mcpmeter_auth_checks_total\{scope="ingest",result="rate_limited"\} (\d+)', metrics)
        assert limited and int(limited.group(1)) >= 5, "the SDK never met the limit: the test proves nothing"
    finally:
        stop_collector(c)
    store = open_store(str(db))
    assert stored_count(store) == 70
    store.close()


def test_signing_in_with_guessed_keys_costs_the_address_its_budget(store):
    make_keys(store)
    with TestClient(create_app(store, config(per_ip=3))) as c:
        statuses = [c.post("/v1/session", json={"key": f"mcpm_guess{i}"}, headers={"X-MCPMeter-CSRF": "1"}).status_code
                    for i in range(4)]
        assert statuses == [401, 401, 401, 429]

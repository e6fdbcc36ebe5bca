"""The MCP directory seed (003) on a real `mcpmeter serve`, on SQLite and PostgreSQL.

A directory server with its own key (`mcpmeter keys create --server ... --require-signature`,
the seed's "each server has a unique API key" and "HMAC signatures") submits signed counters,
gauges and timers to `/functions/v1/metrics-collect` with `server_id`, fetches them back by
every period of the seed with `metrics=a,b`, and the directory tracks views, installations and
tool usage through `/functions/v1/usage-track`. The key refuses other servers, per event.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from conftest import MCPMETER, make_keys, start_collector, stop_collector
from foundation_helpers import event
from mcpmeter.signing import signature_headers
from mcpmeter.storage import open_store
from mcpmeter.storage.base import EventFilter
from store_backends import store_location

pytestmark = pytest.mark.slow
SEED_PERIODS = ("1h", "6h", "12h", "1d", "7d", "30d", "90d")
SERVER = "server-123"


@pytest.fixture(params=["sqlite", "postgres"])
def directory(request, tmp_path):
    with store_location(request.param, tmp_path) as db:
        store = open_store(db)
        keys = make_keys(store)
        store.close()
        made = subprocess.run([*MCPMETER, "keys", "create", "--name", "server-123-metrics", "--server", SERVER,
                               "--require-signature", "--db", str(db)], capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
        assert f"for server(s) {SERVER} only" in made.stderr
        key = made.stdout.splitlines()[0]
        secret = re.search(r"signing secret: (\S+)", made.stdout).group(1)
        listed = subprocess.run([*MCPMETER, "keys", "list", "--json", "--db", str(db)], capture_output=True, text=True, timeout=60)
        assert {k["name"]: k["servers"] for k in json.loads(listed.stdout)}["server-123-metrics"] == [SERVER]
        c = start_collector(db, env={"MCPMETER_LOCAL_TRUST": "false"}, log=tmp_path / "collector.log")
        try:
            yield c, keys, key, secret, db
        finally:
            stop_collector(c)


def signed_post(url: str, key: str, secret: str, body: dict | list, now: float | None = None) -> httpx.Response:
    raw = json.dumps(body).encode()
    headers = {"X-API-Key": key, "Content-Type": "application/json", **signature_headers(secret, raw, now)}
    return httpx.post(url, content=raw, headers=headers, timeout=30)


def fetch(c, keys, **params) -> dict:
    r = httpx.get(c.url + "/functions/v1/metrics-fetch", params=params, headers={"Authorization": f"Bearer {keys.read}"},
                  timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_a_directory_server_submits_signed_metrics_and_fetches_them_by_every_period(directory):
    c, keys, key, secret, _ = directory
    now = datetime.now(UTC)
    old = now - timedelta(days=3)
    payload = {"server_id": SERVER, "metrics": [
        {"name": "api_calls", "value": 5, "type": "counter", "tags": {"endpoint": "query"}, "timestamp": iso(now)},
        {"name": "api_calls", "value": 2, "type": "counter", "tags": {"endpoint": "query"}, "timestamp": iso(now - timedelta(seconds=1))},
        {"name": "memory_mb", "value": 512.5, "type": "gauge", "timestamp": iso(now)},
        {"name": "response_time", "value": 120.5, "type": "timer", "tags": {"endpoint": "query"}, "timestamp": iso(now)},
        {"name": "response_time", "value": 80.0, "type": "timer", "tags": {"endpoint": "query"}, "timestamp": iso(old)},
    ]}
    raw = json.dumps(payload).encode()
    headers = {"X-API-Key": key, "Content-Type": "application/json", **signature_headers(secret, raw)}
    r = httpx.post(c.url + "/functions/v1/metrics-collect", content=raw, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 5, "duplicates": 0, "rejected": []}
    replay = httpx.post(c.url + "/functions/v1/metrics-collect", content=raw, headers=headers, timeout=30)  # captured, sent again
    assert replay.status_code == 401 and "replay" in replay.json()["error"]
    again = signed_post(c.url + "/functions/v1/metrics-collect", key, secret, payload, time.time() - 2)  # a retry, signed anew
    assert again.json()["duplicates"] == 5

    unsigned = httpx.post(c.url + "/functions/v1/metrics-collect", json=payload, headers={"X-API-Key": key}, timeout=30)
    assert unsigned.status_code == 401 and "requires signed submissions" in unsigned.json()["error"]

    for period in SEED_PERIODS:
        got = fetch(c, keys, server_id=SERVER, period=period, metrics="api_calls,response_time")
        assert got["server_id"] == SERVER and got["period"] == period
        assert {s["name"] for s in got["series"]} == {"api_calls", "response_time"}  # memory_mb not asked for
        days = {(s["name"], d["day"]): d for s in got["series"] for d in s["days"]}
        today = (now.strftime("%Y-%m-%d"))
        calls = days[("api_calls", today)]
        assert (calls["count"], calls["sum"]) == (2, 7)
        timer_days = {day for (name, day) in days if name == "response_time"}
        assert today in timer_days
        assert (old.strftime("%Y-%m-%d") in timer_days) == (period in ("7d", "30d", "90d")), period
    everything = fetch(c, keys, server_id=SERVER, period="1d")
    assert {s["name"] for s in everything["series"]} == {"api_calls", "memory_mb", "response_time"}
    gauge = next(s for s in everything["series"] if s["name"] == "memory_mb")
    assert gauge["type"] == "gauge" and gauge["days"][0]["last"] == 512.5
    assert fetch(c, keys, server_id="another-server", period="7d")["series"] == []  # server_id filters
    assert fetch(c, keys, server=SERVER, period="7d", metrics="memory_mb")["series"][0]["name"] == "memory_mb"
    same = httpx.post(c.url + "/v1/measurements", json={"server_id": "elsewhere", "server": SERVER, "metrics": []},
                      headers={"Authorization": f"Bearer {keys.ingest}"}, timeout=30)
    assert same.status_code == 422 and "server_id and server" in same.json()["error"]


def test_a_key_bound_to_a_server_submits_for_it_alone(directory):
    c, keys, key, secret, _ = directory
    other = {"server_id": "server-456", "metrics": [{"name": "api_calls", "value": 1, "type": "counter"}]}
    r = signed_post(c.url + "/functions/v1/metrics-collect", key, secret, other)
    assert r.status_code == 403
    assert r.json()["error"].startswith(f"this API key may submit only for server(s) {SERVER}, not for 'server-456'")
    mixed = [event(server=SERVER, tool="search", id="e-mine"), event(server="server-456", tool="search", id="e-other")]
    r = signed_post(c.url + "/v1/events", key, secret, mixed)
    assert r.status_code == 200
    answer = r.json()
    assert answer["accepted"] == 1
    assert answer["rejected"] == [{"index": 1, "id": "e-other",
                                   "error": f"this API key may submit only for server(s) {SERVER}, not for 'server-456' - `$.server`"}]
    r = signed_post(c.url + "/functions/v1/usage-track", key, secret, {"server_id": "server-456", "action": "view"})
    assert r.status_code == 422 and "may submit only for server(s)" in r.json()["rejected"][0]["error"]
    # The team's unbound key still submits for any server.
    r = httpx.post(c.url + "/functions/v1/metrics-collect", json=other, headers={"X-API-Key": keys.ingest}, timeout=30)
    assert r.status_code == 200 and r.json()["accepted"] == 1
    # Over HTTP, an admin binds a key the same way.
    r = httpx.post(c.url + "/v1/admin/keys", json={"name": "s456", "scopes": ["ingest"], "servers": ["server-456"]},
                   headers={"Authorization": f"Bearer {keys.admin}"}, timeout=30)
    assert r.status_code == 201 and r.json()["servers"] == ["server-456"]
    bound = r.json()["key"]
    r = httpx.post(c.url + "/v1/events", json=[event(server=SERVER, tool="x")], headers={"X-API-Key": bound}, timeout=30)
    assert r.status_code == 422 and "not for 'server-123'" in r.json()["rejected"][0]["error"]
    bad = httpx.post(c.url + "/v1/admin/keys", json={"name": "bad", "scopes": ["ingest"], "servers": "server-456"},
                     headers={"Authorization": f"Bearer {keys.admin}"}, timeout=30)
    assert bad.status_code == 422 and "servers" in bad.text


def test_the_directory_tracks_views_installations_and_tool_usage(directory):
    c, _, key, secret, db = directory
    actions = [
        {"server_id": SERVER, "action": "view", "details": {"page": "/servers/server-123", "user_id": "visitor-1"}},
        {"server_id": SERVER, "action": "view", "details": {"page": "/servers/server-123", "user_id": "visitor-2"}},
        {"server_id": SERVER, "action": "install", "details": {"client": "claude-desktop", "user_id": "visitor-1"}},
        {"server_id": SERVER, "action": "tool_usage", "details": {"tool_name": "query", "user_id": "visitor-2"}},
    ]
    for item in actions[:2]:
        r = signed_post(c.url + "/functions/v1/usage-track", key, secret, item)
        assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    r = signed_post(c.url + "/functions/v1/usage-track", key, secret, actions[2:])
    assert r.json()["accepted"] == 2
    refused = signed_post(c.url + "/functions/v1/usage-track", key, secret, {"server_id": SERVER, "action": "tool_call"})
    assert refused.status_code == 422 and "event kind mcpmeter records itself" in refused.json()["error"]
    missing = signed_post(c.url + "/functions/v1/usage-track", key, secret, {"action": "view"})
    assert missing.status_code == 422 and "server_id" in missing.json()["error"]

    store = open_store(db)
    try:
        project = store.project_by_name("default")
        f = EventFilter(project.id, int(time.time() * 1000) - 86_400_000, int(time.time() * 1000) + 60_000)
        counts = {kind: store.count_events(f, kind) for kind in ("view", "install", "tool_usage", "tool_call")}
        assert counts == {"view": 2, "install": 1, "tool_usage": 1, "tool_call": 0}
        assert len(store.export_events(project.id)) == 4
        raw = json.dumps([list(r) for r in store.export_events(project.id)])
        assert "visitor-1" not in raw and "/servers/server-123" in raw and "query" in raw  # users kept only as hashes
    finally:
        store.close()

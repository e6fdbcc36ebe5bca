"""The dashboard's server side, in process: sign-in sessions, CSRF, pages, assets, admin API,
the live broadcaster and the users-over-time answer. The browser tests are in
test_dashboard_browser.py."""

from __future__ import annotations

import asyncio
import gzip
import re
import threading
import time

import pytest
from starlette.testclient import TestClient

from conftest import make_keys
from foundation_helpers import event, now_ms
from mcpmeter import demo
from mcpmeter import keys as keylib
from mcpmeter.analytics import queries
from mcpmeter.analytics.periods import window
from mcpmeter.analytics.queries import Query
from mcpmeter.events import ROW_FIELDS, Row
from mcpmeter.server.collector import CollectorConfig, create_app
from mcpmeter.server.commits import Commit, ProjectBatch
from mcpmeter.server.dashboard import live as livelib

CSRF = {"X-MCPMeter-CSRF": "1"}
# Nothing here depends on the backend (the users-over-time answer only combines the store's
# `users`/`new_users`, which the analytics tests check on every backend): SQLite is enough.
sqlite_only = pytest.mark.parametrize("store", ["sqlite"], indirect=True)


@pytest.fixture
def keys(store):
    return make_keys(store)


@pytest.fixture
def remote(store):
    """The collector seen from another machine, with loopback trust on (it must not matter)."""
    with TestClient(create_app(store, CollectorConfig(local_trust=True))) as c:
        yield c


def sign_in(c: TestClient, key: str):
    return c.post("/v1/session", json={"key": key}, headers=CSRF)


# ---- sign-in ---------------------------------------------------------------------------------


@sqlite_only
def test_a_read_key_signs_in_and_the_cookie_then_reads_usage(remote, keys):
    assert remote.get("/v1/usage/summary").status_code == 401
    r = sign_in(remote, keys.read)
    assert r.status_code == 200, r.text
    assert r.json() == {"signed_in": True, "via": "session", "project": "default", "scopes": ["read"]}
    cookie = r.headers["set-cookie"]
    assert re.match(r"mcpmeter_session=[\w-]{40,}; Path=/; Max-Age=\d+; HttpOnly; SameSite=Strict$", cookie), cookie
    assert keys.read not in cookie  # the key itself never goes back to the browser
    assert remote.get("/v1/usage/summary").status_code == 200
    assert remote.get("/v1/session").json()["via"] == "session"


@sqlite_only
def test_the_cookie_is_secure_when_served_over_https(store, keys):
    with TestClient(create_app(store), base_url="https://mcpmeter.example") as c:
        assert "; Secure" in sign_in(c, keys.read).headers["set-cookie"]


@sqlite_only
@pytest.mark.parametrize("case", ["no header", "unknown key", "ingest-only key", "revoked key", "no key"])
def test_sign_in_refuses_what_cannot_read(remote, store, keys, case):
    if case == "revoked key":
        store.revoke_key(None, "default-read")
    key = {"unknown key": "mcpm_nope", "ingest-only key": keys.ingest}.get(case, keys.read)
    headers = {} if case == "no header" else CSRF
    body = {} if case == "no key" else {"key": key}
    r = remote.post("/v1/session", json=body, headers=headers)
    assert r.status_code == {"no header": 403, "unknown key": 401, "ingest-only key": 403, "revoked key": 401, "no key": 400}[case]
    assert r.json()["error"] and "set-cookie" not in r.headers
    assert remote.get("/v1/usage/summary").status_code == 401


@sqlite_only
def test_a_session_stops_working_when_its_key_is_revoked(remote, store, keys):
    sign_in(remote, keys.read)
    assert remote.get("/v1/usage/summary").status_code == 200
    store.revoke_key(None, "default-read")
    deadline = time.monotonic() + 5
    while remote.get("/v1/usage/summary").status_code == 200:  # the key cache lives one second
        assert time.monotonic() < deadline, "a revoked key's session still reads"
        time.sleep(0.05)
    assert remote.get("/v1/usage/summary").status_code == 401


@sqlite_only
def test_sign_out_ends_the_session(remote, keys):
    sign_in(remote, keys.read)
    token = remote.cookies["mcpmeter_session"]
    assert remote.delete("/v1/session").status_code == 403  # needs the CSRF header too
    r = remote.delete("/v1/session", headers=CSRF)
    assert r.status_code == 200 and "Max-Age=0" in r.headers["set-cookie"]
    remote.cookies.set("mcpmeter_session", token)  # a copied cookie is dead as well
    assert remote.get("/v1/usage/summary").status_code == 401


@sqlite_only
def test_cookie_changes_need_the_csrf_header(remote, keys):
    sign_in(remote, keys.admin)
    r = remote.post("/v1/admin/keys", json={"name": "forged", "scopes": ["admin"]})
    assert r.status_code == 403 and "X-MCPMeter-CSRF" in r.json()["error"]
    assert remote.delete("/v1/admin/keys/default-read").status_code == 403
    assert remote.post("/v1/events", json=[event()]).status_code == 403
    assert "forged" not in [k["name"] for k in remote.get("/v1/admin/keys").json()["keys"]]
    assert remote.post("/v1/admin/keys", json={"name": "made", "scopes": ["read"]}, headers=CSRF).status_code == 201


@sqlite_only
def test_a_key_header_wins_over_the_cookie(remote, store, keys):
    other = make_keys(store, "beta")
    sign_in(remote, keys.read)
    r = remote.get("/v1/usage/summary", headers={"Authorization": f"Bearer {other.read}"})
    assert r.json()["project"] == "beta"
    assert remote.get("/v1/usage/summary").json()["project"] == "default"


# ---- pages and assets ------------------------------------------------------------------------


@sqlite_only
def test_pages_send_strangers_to_sign_in_and_keep_where_they_were_going(remote, keys):
    r = remote.get("/tools/weblab_search?period=30d", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/signin?next=%2Ftools%2Fweblab_search%3Fperiod%3D30d"
    assert remote.get("/signin").status_code == 200
    sign_in(remote, keys.read)
    page = remote.get("/", follow_redirects=False)
    assert page.status_code == 200 and 'data-page="overview"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    admin = remote.get("/admin", follow_redirects=False)
    assert admin.status_code == 303 and admin.headers["location"].endswith("&need=admin")


@sqlite_only
def test_loopback_with_local_trust_opens_the_dashboard_without_a_key(store):
    with TestClient(create_app(store, CollectorConfig(local_trust=True)), client=("127.0.0.1", 5000), base_url="http://127.0.0.1") as c:
        assert c.get("/", follow_redirects=False).status_code == 200
        assert c.get("/admin", follow_redirects=False).status_code == 200
        assert c.get("/v1/session").json() == {"signed_in": True, "via": "local", "project": "default",
                                               "scopes": ["admin", "ingest", "read"]}
    with TestClient(create_app(store, CollectorConfig(local_trust=False)), client=("127.0.0.1", 5000), base_url="http://127.0.0.1") as c:
        assert c.get("/", follow_redirects=False).status_code == 303
        assert c.get("/v1/session").json()["signed_in"] is False


@sqlite_only
def test_every_asset_is_served_by_the_collector_compressed_and_cached(remote, keys):
    sign_in(remote, keys.read)
    html = remote.get("/").text + remote.get("/signin").text
    urls = set(re.findall(r'(?:href|src)="([^"]+)"', html))
    assert urls and all(u.startswith("/static/") or (u.startswith("/") and not u.startswith("//")) for u in urls), urls
    assert not re.search(r"https?://", re.sub(r'http://www\.w3\.org/[^"]*', "", html))  # no CDN, no external font
    version = re.search(r"/static/(\w+)/", html).group(1)
    for url in [u for u in urls if u.startswith("/static/")]:
        r = remote.get(url, headers={"Accept-Encoding": "gzip"})
        assert r.status_code == 200, url
        assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert r.headers["x-content-type-options"] == "nosniff"
        if url.endswith((".js", ".css")):
            assert r.headers["content-encoding"] == "gzip"
            assert int(r.headers["content-length"]) < len(r.content)  # httpx inflated it for us
        again = remote.get(url, headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304
    for module in re.findall(r'from "\./([\w]+\.js)"', remote.get(f"/static/{version}/js/overview.js").text):
        assert remote.get(f"/static/{version}/js/{module}").status_code == 200  # relative imports resolve
    assert remote.get(f"/static/{version}/vendor/uPlot.LICENSE").status_code == 200
    assert remote.get(f"/static/{version}/nope.js").status_code == 404
    raw = remote.get(f"/static/{version}/vendor/uPlot.iife.min.js", headers={"Accept-Encoding": "gzip"})
    assert len(gzip.compress(raw.content)) < 30_000  # the charting library stays small


# ---- admin API -------------------------------------------------------------------------------


@sqlite_only
def test_admin_keys_are_created_once_listed_and_revoked_within_the_project(remote, store, keys):
    beta = make_keys(store, "beta")
    headers = {"Authorization": f"Bearer {keys.admin}"}
    made = remote.post("/v1/admin/keys", json={"name": "grafana", "scopes": ["read"], "expires_days": 30}, headers=headers)
    assert made.status_code == 201, made.text
    new_key = made.json()["key"]
    assert new_key.startswith("mcpm_") and made.json()["expires"]
    assert remote.get("/v1/usage/summary", headers={"Authorization": f"Bearer {new_key}"}).json()["project"] == "default"
    listed = remote.get("/v1/admin/keys", headers=headers)
    assert new_key not in listed.text  # shown once, never again
    names = {k["name"]: k for k in listed.json()["keys"]}
    assert set(names) == {"default-ingest", "default-read", "default-admin", "grafana"}  # not beta's
    assert names["default-admin"]["last_used"] is not None  # this very request used it
    assert remote.post("/v1/admin/keys", json={"name": "grafana", "scopes": ["read"]}, headers=headers).status_code == 409
    assert remote.post("/v1/admin/keys", json={"name": "x", "scopes": ["root"]}, headers=headers).status_code == 422
    assert remote.delete("/v1/admin/keys/beta-read", headers=headers).status_code == 404  # another project's key
    assert store.key_by_hash(keylib.hash_key(beta.read)).revoked_at is None
    assert remote.delete("/v1/admin/keys/grafana", headers=headers).json()["revoked"] == 1
    states = {k["name"]: k["state"] for k in remote.get("/v1/admin/keys", headers=headers).json()["keys"]}
    assert states["grafana"] == "revoked"
    projects = remote.get("/v1/admin/projects", headers=headers).json()["projects"]
    assert [p["name"] for p in projects] == ["default"]


@sqlite_only
def test_admin_endpoints_need_the_admin_scope(remote, keys):
    for method, path in [("GET", "/v1/admin/keys"), ("GET", "/v1/admin/health"), ("GET", "/v1/admin/projects"),
                         ("POST", "/v1/admin/keys"), ("DELETE", "/v1/admin/keys/x")]:
        r = remote.request(method, path, headers={"Authorization": f"Bearer {keys.read}"}, json={})
        assert r.status_code == 403, (method, path, r.text)
        assert remote.request(method, path, json={}).status_code == 401


@sqlite_only
def test_health_reports_ingest_and_the_collectors_state(remote, keys):
    admin = {"Authorization": f"Bearer {keys.admin}"}
    batch = [event(ts=now_ms() - i) for i in range(5)]
    assert remote.post("/v1/events", json=batch, headers={"Authorization": f"Bearer {keys.ingest}"}).json()["accepted"] == 5
    remote.post("/v1/events", json=[*batch[:2], {"kind": "tool_call"}], headers={"Authorization": f"Bearer {keys.ingest}"})
    h = remote.get("/v1/admin/health", headers=admin).json()
    assert h["ingest"]["accepted_since_start"] == 5
    assert h["ingest"]["events_per_second_1m"] == pytest.approx(5 / 60, abs=0.01)
    c = h["collector"]
    assert (c["accepted"], c["duplicates"], c["rejected"]) == (5, 2, 1)
    assert c["writer_alive"] is True and c["writer_queue_rows"] == 0 and c["storage_bytes"] > 0


# ---- users over time -------------------------------------------------------------------------


@sqlite_only
def test_users_per_bucket_split_new_and_returning_and_add_up(store):
    demo.fill(store, days=20, users=12, calls_per_day=60, seed=3)
    project = store.project_by_name("default")
    for period in ("7d", "30d", "1d"):
        q = Query(project.id, window(period))
        answer = queries.users(store, q)
        series = queries.timeseries(store, q)
        assert [p["t"] for p in answer["points"]] == [p["t"] for p in series["points"]]
        assert [p["users"] for p in answer["points"]] == [p["users"] for p in series["points"]]
        assert all(p["new_users"] + p["returning_users"] == p["users"] for p in answer["points"])
        assert sum(p["new_users"] for p in answer["points"]) == answer["new_users"]  # a user is new once
        summary = queries.summary(store, q)
        assert (answer["users"], answer["new_users"]) == (summary["users"], summary["new_users"])
    month = queries.users(store, Query(project.id, window("30d")))
    assert month["new_users"] == month["users"] > 3  # the demo began 20 days ago: every user is new in 30 days


# ---- live broadcaster ------------------------------------------------------------------------


def _row(**fields):
    base = dict.fromkeys(ROW_FIELDS)
    base.update({"event_id": f"e{time.monotonic_ns()}", "kind": "tool_call", "ts": now_ms(), "server": "weblab",
                 "tool": "search", "ok": 1, "duration_ms": 5.0}, **fields)
    return Row(*(base[f] for f in ROW_FIELDS))


def test_live_sends_each_subscriber_its_matching_calls_and_drops_for_the_slow():
    async def scenario():
        live = livelib.Live()
        everything = live.subscribe(1, None, None, None)
        cursor = live.subscribe(1, None, None, "cursor")
        other_project = live.subscribe(2, None, None, None)
        rows = [_row(client_name="cursor"), _row(client_name="claude-code", ok=0, error_type="TimeoutError"),
                _row(kind="list_tools", tool=None)]
        writer = threading.Thread(target=live.committed, args=(Commit({1: rows}, 4, 0.001),))  # as the writer thread does
        writer.start()
        writer.join()
        event_name, message, _ = await asyncio.wait_for(everything.queue.get(), 2)
        assert event_name == "calls" and (message["calls"], message["errors"]) == (2, 1)
        assert {r["client"] for r in message["recent"]} == {"cursor", "claude-code"}
        _, filtered, _ = await asyncio.wait_for(cursor.queue.get(), 2)
        assert filtered["calls"] == 1 and filtered["recent"][0]["client"] == "cursor"
        assert other_project.queue.empty()  # another project's calls never reach it
        for _ in range(livelib.QUEUE_SIZE + 5):  # nobody reads `everything` any more
            live._fanout(ProjectBatch(1, rows))
        assert everything.dropped == 5 and live.dropped >= 5
        while not everything.queue.empty():
            everything.queue.get_nowait()
        live._fanout(ProjectBatch(1, rows))
        assert everything.queue.get_nowait()[0] == "resync"  # told to re-read what it missed
        live.unsubscribe(everything)
        live.unsubscribe(cursor)
        live.unsubscribe(other_project)
        assert live.subscribers() == 0
        assert live.rate.totals == {1: 3}

    asyncio.run(scenario())

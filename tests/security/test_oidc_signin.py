"""People sign in to the dashboard with OpenID Connect (code flow + PKCE) against a real
provider, and see exactly the project they were granted, with the role they were granted,
until the grant is revoked. Tokens that do not verify are refused.

Under hostile use (issue 12): the unauthenticated login endpoint is rate-limited per
address, a flood of logins from many addresses spoils nobody's pending sign-in, a sign-in
started on one worker finishes on another (`--workers 2`), and `next` never leads to another
site."""

from __future__ import annotations

import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import httpx
import pytest
from oidc_provider import Provider

from conftest import MCPMETER, free_port, make_keys, start_collector, stop_collector
from foundation_helpers import event
from mcpmeter.server.oidc import LOGINS_PER_MINUTE
from mcpmeter.storage import open_store

CLIENT_ID, CLIENT_SECRET = "mcpmeter-dashboard", "s3cret-of-the-client"


@pytest.fixture
def provider():
    p = Provider(CLIENT_ID, CLIENT_SECRET).start()
    yield p
    p.stop()


@pytest.fixture
def world(tmp_path, provider):
    """A collector with two projects of data, signing people in at the provider."""
    db = tmp_path / "store.db"
    store = open_store(str(db))
    keys = {name: make_keys(store, name) for name in ("weblab", "other")}
    store.close()
    port = free_port()
    env = {"MCPMETER_OIDC_ISSUER": provider.issuer, "MCPMETER_OIDC_CLIENT_ID": CLIENT_ID,
           "MCPMETER_OIDC_CLIENT_SECRET": CLIENT_SECRET, "MCPMETER_OIDC_REDIRECT_URL": f"http://127.0.0.1:{port}/v1/oidc/callback",
           "MCPMETER_OIDC_ACCESS": json.dumps({"group:analysts": {"other": "admin"}}), "MCPMETER_LOCAL_TRUST": "false"}
    c = start_collector(db, env=env, port=port, log=tmp_path / "collector.log")
    for name, server in (("weblab", "weblab-server"), ("other", "zzotherserverzz")):
        r = httpx.post(c.url + "/v1/events", json=[event(server=server, tool="search", user="u")],
                       headers={"Authorization": f"Bearer {keys[name].ingest}"})
        assert r.json()["accepted"] == 1
    yield c, db
    stop_collector(c)


def access(db, *args: str) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MCPMETER_")}
    r = subprocess.run([*MCPMETER, "access", *args, "--db", str(db)], capture_output=True, text=True, env=base, timeout=60)
    assert r.returncode == 0, r.stderr


def sign_in(c, **params) -> tuple[httpx.Client, httpx.Response]:
    client = httpx.Client(base_url=c.url, follow_redirects=True, timeout=20)
    r = client.get("/v1/oidc/login", params={"next": "/v1/session", **params})
    return client, r


def test_a_person_sees_exactly_the_project_granted_to_them(world, provider):
    c, db = world
    access(db, "grant", "alice@example.com", "--project", "weblab", "--role", "viewer")
    client, r = sign_in(c)
    with closing(client):
        assert r.status_code == 200, r.text
        assert str(r.url).endswith("/v1/session")  # sent back where the sign-in started
        me = r.json()
        assert me == {"signed_in": True, "via": "session", "project": "weblab", "scopes": ["read"]}
        cookie = next(h for h in r.history[-1].headers.get_list("set-cookie") if h.startswith("mcpmeter_session="))
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        tools = client.get("/v1/usage/tools", params={"period": "7d"})
        assert tools.status_code == 200 and "weblab-server" in tools.text and "zzotherserverzz" not in tools.text
        for path in ("/v1/usage/summary", "/v1/usage/report", "/v1/usage/errors", "/v1/usage/clients", "/metrics"):
            answer = client.get(path)
            assert answer.status_code == 200 and "zzotherserverzz" not in answer.text, path
        assert client.get("/v1/admin/keys").status_code == 403  # a viewer reads, nothing more
        assert client.post("/v1/oidc/project", json={"project": "other"}, headers={"X-MCPMeter-CSRF": "1"}).status_code == 403
        # taking the grant away ends the access at the next request
        access(db, "revoke", "alice@example.com", "--project", "weblab")
        assert client.get("/v1/usage/summary").status_code == 403
    assert provider.token_requests == 1


def test_a_group_claim_grants_its_project_and_role(world, provider):
    c, _ = world
    provider.user = {"sub": "bob-2", "email": "bob@example.com", "email_verified": True, "groups": ["analysts"]}
    client, r = sign_in(c)
    with closing(client):
        assert r.json()["project"] == "other" and r.json()["scopes"] == ["admin", "read"]
        assert client.get("/v1/admin/keys").status_code == 200  # admin of that project only
        listed = client.get("/v1/admin/keys").json()
        assert {k["name"] for k in listed["keys"]} == {"other-ingest", "other-read", "other-admin"}
        # a change from the browser needs the CSRF header
        assert client.post("/v1/admin/keys", json={"name": "x", "scopes": ["read"]}).status_code == 403
        made = client.post("/v1/admin/keys", json={"name": "x", "scopes": ["read"]}, headers={"X-MCPMeter-CSRF": "1"})
        assert made.status_code == 201
        audit = client.get("/v1/admin/audit").json()["entries"]
        assert audit[-1]["action"] == "key.create" and audit[-1]["actor"] == "oidc:bob-2 bob@example.com"


def test_people_without_a_grant_and_unverified_emails_get_nothing(world, provider):
    c, db = world
    access(db, "grant", "carol@example.com", "--project", "weblab")
    provider.user = {"sub": "carol-3", "email": "carol@example.com", "email_verified": False}
    client, r = sign_in(c)
    with closing(client):
        assert r.status_code == 403 and "no access to any project" in r.text
        assert client.get("/v1/session").json()["signed_in"] is False


@pytest.mark.parametrize("fault", ["sign_with_other_key", "wrong_nonce"])
def test_id_tokens_that_do_not_verify_are_refused(world, provider, fault):
    c, db = world
    access(db, "grant", "alice@example.com", "--project", "weblab")
    setattr(provider, fault, True)
    client, r = sign_in(c)
    with closing(client):
        assert r.status_code == 400 and "Sign-in failed" in r.text
        assert ("does not verify" if fault == "sign_with_other_key" else "nonce") in r.text
        assert client.get("/v1/session").json()["signed_in"] is False


def test_a_callback_cannot_be_replayed_or_completed_in_another_browser(world, provider):
    c, db = world
    access(db, "grant", "alice@example.com", "--project", "weblab")
    with httpx.Client(base_url=c.url, follow_redirects=False, timeout=20) as victim:
        to_provider = victim.get("/v1/oidc/login")
        assert to_provider.status_code == 303
        location = to_provider.headers["location"]
        assert "code_challenge=" in location and "code_challenge_method=S256" in location and "nonce=" in location
        back = httpx.get(location, follow_redirects=False)
        callback = back.headers["location"]
        flow_cookie = dict(victim.cookies)
        with httpx.Client(timeout=20) as attacker:  # without the browser's flow cookie
            for _ in range(2):
                r = attacker.get(callback)
                assert r.status_code == 400 and "another browser" in r.text
        done = victim.get(callback)  # the attacker's attempts spoiled nothing: the browser finishes
        assert done.status_code == 303 and "mcpmeter_session=" in done.headers.get("set-cookie", "")
    with httpx.Client(timeout=20, cookies=flow_cookie) as replay:  # even with the cookie, a state is good once
        r = replay.get(callback)
        assert r.status_code == 400 and "already completed" in r.text


# ---- under hostile use ------------------------------------------------------------------------------


def sso_collector(tmp_path, provider: Provider, *args: str):
    db = tmp_path / "store.db"
    store = open_store(str(db))
    make_keys(store, "weblab")
    store.close()
    port = free_port()
    env = {"MCPMETER_OIDC_ISSUER": provider.issuer, "MCPMETER_OIDC_CLIENT_ID": CLIENT_ID,
           "MCPMETER_OIDC_CLIENT_SECRET": CLIENT_SECRET, "MCPMETER_OIDC_REDIRECT_URL": f"http://127.0.0.1:{port}/v1/oidc/callback",
           "MCPMETER_OIDC_ACCESS": json.dumps({"alice@example.com": {"weblab": "viewer"}}), "MCPMETER_LOCAL_TRUST": "false"}
    return start_collector(db, env=env, port=port, log=tmp_path / "collector.log", args=args)


def from_address(address: str) -> dict[str, str]:
    """The collector runs behind a proxy on loopback here: uvicorn takes the client's address from X-Forwarded-For."""
    return {"X-Forwarded-For": address}


def test_logins_are_rate_limited_per_address(tmp_path, provider):
    c = sso_collector(tmp_path, provider)
    try:
        start = time.monotonic()
        codes = [httpx.get(c.url + "/v1/oidc/login", headers=from_address("203.0.113.9")).status_code
                 for _ in range(LOGINS_PER_MINUTE + 10)]
        refilled = (time.monotonic() - start) * LOGINS_PER_MINUTE / 60  # the bucket refills as time passes
        assert codes[:LOGINS_PER_MINUTE] == [303] * LOGINS_PER_MINUTE and set(codes) == {303, 429}
        assert codes.count(303) <= LOGINS_PER_MINUTE + refilled + 1
        r = httpx.get(c.url + "/v1/oidc/login", headers=from_address("203.0.113.9"))
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert httpx.get(c.url + "/v1/oidc/login", headers=from_address("198.51.100.4")).status_code == 303  # others go on
    finally:
        stop_collector(c)


@pytest.mark.slow
def test_a_flood_of_logins_spoils_nobodys_pending_sign_in(tmp_path, provider):
    c = sso_collector(tmp_path, provider)
    try:
        with closing(httpx.Client(base_url=c.url, timeout=20)) as victim:
            to_provider = victim.get("/v1/oidc/login", params={"next": "/v1/session"}, headers=from_address("192.0.2.1"))
            assert to_provider.status_code == 303
            # Over 10,000 logins (the old bound on pending sign-ins), from as many addresses as the limit asks for.
            addresses = [f"10.{i // 250}.{i % 250}.1" for i in range(10_020 // LOGINS_PER_MINUTE + 1)]

            def flood(address: str) -> int:
                with httpx.Client(base_url=c.url, timeout=30) as attacker:
                    return sum(attacker.get("/v1/oidc/login", headers=from_address(address)).status_code == 303
                               for _ in range(LOGINS_PER_MINUTE))

            with ThreadPoolExecutor(8) as pool:
                assert sum(pool.map(flood, addresses)) > 10_000
            back = httpx.get(to_provider.headers["location"], follow_redirects=False)
            done = victim.get(back.headers["location"], follow_redirects=True)
            assert done.status_code == 200 and done.json()["signed_in"] is True and done.json()["project"] == "weblab"
    finally:
        stop_collector(c)


def test_a_sign_in_started_on_one_worker_finishes_on_any_and_next_stays_on_this_site(tmp_path, provider):
    c = sso_collector(tmp_path, provider, "--workers", "2")
    try:
        for _ in range(6):  # each step on a new connection: the two workers take turns at random
            to_provider = httpx.get(c.url + "/v1/oidc/login", params={"next": "/\t/evil.example"})
            assert to_provider.status_code == 303
            back = httpx.get(to_provider.headers["location"], follow_redirects=False)
            done = httpx.get(back.headers["location"], cookies=to_provider.cookies, follow_redirects=False)
            assert done.status_code == 303, done.text
            assert done.headers["location"] == "/"  # not //evil.example
            cookie = done.cookies["mcpmeter_session"]
            answers = [httpx.get(c.url + "/v1/usage/summary", params={"period": "7d"},
                                 cookies={"mcpmeter_session": cookie}).status_code for _ in range(20)]
            assert answers == [200] * 20
    finally:
        stop_collector(c)

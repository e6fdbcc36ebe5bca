"""People sign in to the dashboard with OpenID Connect (code flow + PKCE) against a real
provider, and see exactly the project they were granted, with the role they were granted,
until the grant is revoked. Tokens that do not verify are refused."""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import closing

import httpx
import pytest
from oidc_provider import Provider

from conftest import MCPMETER, free_port, make_keys, start_collector, stop_collector
from foundation_helpers import event
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

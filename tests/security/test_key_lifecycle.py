"""Keys over their life: rotation with an overlap, expiry, last use, revocation that every
collector on the store honours from its next request, and the audit log of it all."""

from __future__ import annotations

import json
import os
import subprocess

import httpx
from security_helpers import wait_until
from starlette.testclient import TestClient

from conftest import MCPMETER, make_keys, start_collector, stop_collector
from foundation_helpers import event
from mcpmeter import keys as keylib
from mcpmeter.server.collector import create_app
from mcpmeter.storage import open_store


def cli(db, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MCPMETER_")}
    return subprocess.run([*MCPMETER, *args, "--db", str(db)], capture_output=True, text=True, timeout=60,
                          env={**base, **(env or {})})


def ingest(c, key: str) -> int:
    return c.post("/v1/events", json=[event()], headers={"Authorization": f"Bearer {key}"}).status_code


def test_revocation_takes_effect_at_the_next_request_on_every_collector(store):
    keys = make_keys(store)
    with TestClient(create_app(store)) as a, TestClient(create_app(store)) as b:  # two collectors, one store
        assert ingest(a, keys.ingest) == 200 and ingest(b, keys.ingest) == 200  # both have it cached now
        assert store.revoke_key(None, "default-ingest") == 1
        assert ingest(a, keys.ingest) == 401  # no waiting: the very next request
        assert ingest(b, keys.ingest) == 401
        assert "revoked" in a.post("/v1/events", json=[], headers={"Authorization": f"Bearer {keys.ingest}"}).json()["error"]
        assert ingest(a, keys.admin) == 200  # the others still work


def test_a_rotated_key_keeps_working_for_the_overlap_then_stops(store):
    keys = make_keys(store)
    with TestClient(create_app(store)) as c:
        admin = {"Authorization": f"Bearer {keys.admin}"}
        r = c.post("/v1/admin/keys/default-ingest/rotate", json={"overlap": "2s"}, headers=admin)
        assert r.status_code == 201, r.text
        new = r.json()["key"]
        assert r.json()["name"] == "default-ingest" and r.json()["scopes"] == ["ingest"]
        assert r.json()["old"]["name"].startswith("default-ingest@")
        assert ingest(c, new) == 200 and ingest(c, keys.ingest) == 200  # both during the overlap
        wait_until(lambda: ingest(c, keys.ingest) == 401, 10, "the old key to expire after the overlap", every=0.2)
        assert ingest(c, new) == 200
        listed = {k["name"]: k for k in c.get("/v1/admin/keys", headers=admin).json()["keys"]}
        assert listed["default-ingest"]["state"] == "active"
        assert listed[r.json()["old"]["name"]]["state"] == "expired"
        assert c.post("/v1/admin/keys/nope/rotate", headers=admin).status_code == 404
        entries = c.get("/v1/admin/audit", headers=admin).json()["entries"]
        assert [e["action"] for e in entries] == ["key.rotate"]
        assert entries[0]["actor"] == f"key:{keylib.display_prefix(keys.admin)}" and entries[0]["target"] == "default-ingest"


def test_the_cli_rotates_signs_revokes_and_audits(tmp_path):
    db = tmp_path / "store.db"
    r = cli(db, "keys", "create", "--name", "gw", "--scopes", "ingest", "--project", "team", "--require-signature")
    assert r.returncode == 0, r.stderr
    key, secret_line = r.stdout.strip().splitlines()
    secret = secret_line.removeprefix("signing secret: ")
    assert secret.startswith("mcps_")
    store = open_store(str(db))
    [info] = store.list_keys()
    assert store.signing_secret(info.id) == secret
    store.close()
    c = start_collector(db, log=tmp_path / "collector.log")
    try:
        assert httpx.post(c.url + "/v1/events", json=[event()], headers={"Authorization": f"Bearer {key}"}).status_code == 401
        r = cli(db, "keys", "rotate", "gw", "--project", "team", "--overlap", "1h")
        assert r.returncode == 0, r.stderr
        new_key, new_secret = r.stdout.strip().splitlines()
        assert new_secret.startswith("signing secret: mcps_") and new_secret != secret_line  # still signed, a new secret
        from mcpmeter.signing import signature_headers

        body = json.dumps([event()]).encode()
        for k, s in ((key, secret), (new_key, new_secret.removeprefix("signing secret: "))):
            headers = {"Authorization": f"Bearer {k}", "Content-Type": "application/json", **signature_headers(s, body)}
            assert httpx.post(c.url + "/v1/events", content=body, headers=headers).status_code == 200
        r = cli(db, "keys", "revoke", "gw", "--project", "team")
        assert r.returncode == 0, r.stderr
        headers = {"Authorization": f"Bearer {new_key}", "Content-Type": "application/json",
                   **signature_headers(new_secret.removeprefix("signing secret: "), body)}
        assert httpx.post(c.url + "/v1/events", content=body, headers=headers).status_code == 401  # at once
    finally:
        stop_collector(c)
    r = cli(db, "audit", "--json")
    assert r.returncode == 0, r.stderr
    entries = json.loads(r.stdout)
    assert [e["action"] for e in entries] == ["project.create", "key.create", "key.rotate", "key.revoke"]
    assert all(e["actor"].startswith("os:") and e["project"] == "team" and e["source"] == "cli" for e in entries)
    assert entries[1]["detail"]["signed"] is True and "mcps_" not in r.stdout  # not even a secret's prefix
    # Keys appear only by their display prefix, never whole (a prefix may by chance begin with any letter).
    assert key not in r.stdout and new_key not in r.stdout and secret not in r.stdout
    r = cli(db, "keys", "list", "--project", "team", "--json")
    states = {k["name"].split("@")[0] + ("@" if "@" in k["name"] else ""): k["state"] for k in json.loads(r.stdout)}
    assert states == {"gw": "revoked", "gw@": "active"}  # the old key lives out its overlap


def test_every_admin_change_over_http_is_audited(store):
    """Built from the routes: every mutating /v1/admin endpoint must leave an audit entry."""
    keys = make_keys(store)
    with TestClient(create_app(store)) as c:
        admin = {"Authorization": f"Bearer {keys.admin}"}
        calls = {
            ("POST", "/v1/admin/keys"): lambda: c.post("/v1/admin/keys", json={"name": "grafana", "scopes": ["read"]}, headers=admin),
            ("DELETE", "/v1/admin/keys/{ref}"): lambda: c.delete("/v1/admin/keys/grafana", headers=admin),
            ("POST", "/v1/admin/keys/{name}/rotate"): lambda: c.post("/v1/admin/keys/default-read/rotate", headers=admin),
            ("POST", "/v1/admin/access"): lambda: c.post("/v1/admin/access", json={"identity": "Ann@Example.com"}, headers=admin),
            ("DELETE", "/v1/admin/access"): lambda: c.delete("/v1/admin/access", params={"identity": "ann@example.com"}, headers=admin),
            ("DELETE", "/v1/admin/users"): lambda: c.delete("/v1/admin/users", params={"user": "alice"}, headers=admin),
        }
        from security_helpers import app_routes

        mutating = {(m, p) for m, p in app_routes(c.app) if p.startswith("/v1/admin/") and m not in ("GET", "HEAD")}
        assert mutating == set(calls), f"an admin endpoint without an audit test: {mutating ^ set(calls)}"
        for (method, path), call in calls.items():
            before = len(c.get("/v1/admin/audit", headers=admin).json()["entries"])
            r = call()
            assert r.status_code < 300, (method, path, r.text)
            after = c.get("/v1/admin/audit", headers=admin).json()["entries"]
            assert len(after) == before + 1, f"{method} {path} left no audit entry"
            assert after[-1]["actor"] == f"key:{keylib.display_prefix(keys.admin)}" and after[-1]["source"] == "http"
        actions = [e["action"] for e in c.get("/v1/admin/audit", headers=admin).json()["entries"]]
        assert actions == ["key.create", "key.revoke", "key.rotate", "access.grant", "access.revoke", "user.delete"]


def test_last_use_is_recorded(store):
    keys = make_keys(store)
    with TestClient(create_app(store)) as c:
        assert ingest(c, keys.ingest) == 200
        c.app.state.collector.auth.flush_last_used()
    [info] = [k for k in store.list_keys() if k.name == "default-ingest"]
    assert info.last_used_at is not None

"""Who may ingest and read: API keys, scopes, revocation, trusted loopback, project isolation."""

from __future__ import annotations

import time

import pytest
from starlette.testclient import TestClient

from conftest import make_keys
from foundation_helpers import event, stored_count, stored_events
from mcpmeter import keys as keylib
from mcpmeter.server.collector import CollectorConfig, create_app

LOOPBACK = ("127.0.0.1", 5000)


def ingest(c: TestClient, key: str | None = None, header: str = "authorization", events=None):
    headers = {}
    if key is not None:
        headers = {"Authorization": f"Bearer {key}"} if header == "authorization" else {"X-API-Key": key}
    return c.post("/v1/events", json=events if events is not None else [event()], headers=headers)


def summary(c: TestClient, key: str | None = None):
    return c.get("/v1/usage/summary", headers={"Authorization": f"Bearer {key}"} if key else {})


def assert_refused(response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert fragment in body["error"]
    assert body["hint"]
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.fixture
def keys(store):
    return make_keys(store)


@pytest.fixture
def remote(store):
    """The collector as seen from another machine (TestClient's default client host)."""
    with TestClient(create_app(store)) as c:
        yield c


def test_a_remote_caller_without_a_key_is_401(remote, store):
    assert_refused(ingest(remote), 401, "an API key is required")
    assert_refused(summary(remote), 401, "an API key is required")
    assert stored_count(store) == 0


def test_an_unknown_key_is_401(remote, store, keys):
    assert_refused(ingest(remote, keylib.new_key()), 401, "unknown API key")
    assert stored_count(store) == 0


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "Token abc"])
def test_a_malformed_authorization_header_is_401(remote, store, header):
    r = remote.post("/v1/events", json=[event()], headers={"Authorization": header})
    assert_refused(r, 401, "must be `Bearer <key>`")
    assert stored_count(store) == 0


def test_an_ingest_key_works_as_bearer_or_x_api_key(remote, store, keys):
    assert ingest(remote, keys.ingest).json()["accepted"] == 1
    assert ingest(remote, keys.ingest, header="x-api-key").json()["accepted"] == 1
    assert stored_count(store) == 2


def test_a_read_key_cannot_ingest(remote, store, keys):
    assert_refused(ingest(remote, keys.read), 403, "lacks the `ingest` scope")
    assert stored_count(store) == 0


def test_an_ingest_key_cannot_read(remote, keys):
    r = summary(remote, keys.ingest)
    assert_refused(r, 403, "lacks the `read` scope")
    assert "--scopes read" in r.json()["hint"]


def test_a_read_key_reads_and_an_admin_key_does_both(remote, keys):
    assert summary(remote, keys.read).status_code == 200
    assert ingest(remote, keys.admin).json()["accepted"] == 1
    assert summary(remote, keys.admin).json()["calls"] == 1


def test_a_revoked_key_is_refused_within_a_second(remote, store, keys):
    assert ingest(remote, keys.ingest).status_code == 200  # now cached as valid
    assert store.revoke_key(None, "default-ingest") == 1
    deadline = time.monotonic() + 1.5
    while (status := ingest(remote, keys.ingest, events=[]).status_code) == 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status == 401
    assert_refused(ingest(remote, keys.ingest), 401, "revoked or has expired")
    assert stored_count(store) == 1


def test_an_expired_key_is_401(remote, store):
    p = store.ensure_project("default")
    key = keylib.new_key()
    store.add_key(p.id, "old", keylib.hash_key(key), keylib.display_prefix(key), ["ingest"], expires_at=int(time.time() * 1000) - 1)
    assert_refused(ingest(remote, key), 401, "revoked or has expired")
    assert stored_count(store) == 0


def test_loopback_without_a_key_is_the_default_project(store):
    make_keys(store, "other")
    with TestClient(create_app(store), client=LOOPBACK, base_url="http://127.0.0.1") as c:
        assert ingest(c).json()["accepted"] == 1
        assert summary(c).json()["project"] == "default"
    assert len(stored_events(store, "default")) == 1


def test_ipv6_loopback_is_trusted_too(store):
    with TestClient(create_app(store), client=("::1", 5000), base_url="http://127.0.0.1") as c:
        assert ingest(c).status_code == 200


def test_loopback_trust_can_be_turned_off(store, monkeypatch):
    monkeypatch.setenv("MCPMETER_LOCAL_TRUST", "false")
    with TestClient(create_app(store), client=LOOPBACK, base_url="http://127.0.0.1") as c:
        assert_refused(ingest(c), 401, "an API key is required")
    with TestClient(create_app(store, CollectorConfig(local_trust=False)), client=LOOPBACK, base_url="http://127.0.0.1") as c:
        assert_refused(ingest(c), 401, "an API key is required")
    assert stored_count(store) == 0


def test_a_key_on_loopback_still_names_its_own_project(store):
    other = make_keys(store, "other")
    with TestClient(create_app(store), client=LOOPBACK, base_url="http://127.0.0.1") as c:
        assert ingest(c, other.ingest).status_code == 200
        assert_refused(ingest(c, keylib.new_key()), 401, "unknown API key")  # a bad key is not waved through
    assert len(stored_events(store, "other")) == 1
    assert stored_events(store, "default") == []


def test_one_projects_keys_never_see_another_projects_data(remote, store):
    a, b = make_keys(store, "a"), make_keys(store, "b")
    ingest(remote, a.ingest, events=[event(tool="only_a"), event(tool="only_a")])
    ingest(remote, b.ingest, events=[event(tool="only_b")])
    seen_a, seen_b = summary(remote, a.read).json(), summary(remote, b.read).json()
    assert (seen_a["project"], seen_a["calls"], [t["tool"] for t in seen_a["tools"]]) == ("a", 2, ["only_a"])
    assert (seen_b["project"], seen_b["calls"], [t["tool"] for t in seen_b["tools"]]) == ("b", 1, ["only_b"])


def test_key_use_is_recorded(store, keys):
    with TestClient(create_app(store)) as c:
        ingest(c, keys.ingest)
    # the app records last use on shutdown at the latest
    used = {k.name: k.last_used_at for k in store.list_keys()}
    assert used["default-ingest"] is not None
    assert used["default-read"] is None


def test_keys_from_the_environment_become_ingest_keys_of_the_default_project(store):
    from mcpmeter.server.collector.bootstrap import register_env_keys

    key = keylib.new_key()
    names = register_env_keys(store, {"MCPMETER_API_KEY_GATEWAY": key, "MCPMETER_API_KEY_EMPTY": "", "OTHER": "x"})
    assert names == ["gateway"]
    assert register_env_keys(store, {"MCPMETER_API_KEY_GATEWAY": key}) == ["gateway"]  # a restart changes nothing
    (info,) = store.list_keys()
    assert (info.name, info.project, info.scopes) == ("gateway", "default", frozenset({"ingest"}))
    with TestClient(create_app(store)) as c:
        assert ingest(c, key).status_code == 200
        assert_refused(summary(c, key), 403, "lacks the `read` scope")


def test_a_local_collector_creates_keys_once_and_saves_them_privately(store, isolated_env):
    import stat

    from mcpmeter import credentials
    from mcpmeter.server.collector.bootstrap import ensure_local_keys

    created = ensure_local_keys(store, "http://localhost:9999")
    assert set(created) == {"ingest", "read", "admin"}
    assert ensure_local_keys(store, "http://127.0.0.1:9999") is None
    path = isolated_env / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert credentials.key_for("http://127.0.0.1:9999/", "read") == created["read"]
    assert credentials.key_for("http://localhost:9999", "ingest") == created["ingest"]
    assert credentials.key_for("http://127.0.0.1:1", "read") is None
    with TestClient(create_app(store)) as c:
        assert summary(c, created["read"]).status_code == 200
        assert_refused(ingest(c, created["read"]), 403, "ingest")

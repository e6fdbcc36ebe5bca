"""Single sign-on under hostile use (issue 12, item 12): the unauthenticated login endpoint is
rate-limited per address, a flood of logins from many addresses spoils nobody's pending
sign-in, a sign-in started on one worker finishes on another (`--workers 2`), and `next`
never leads to another site. A real provider (tests/security/oidc_provider.py) and real
collectors."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from oidc_provider import Provider

from conftest import free_port, make_keys, start_collector, stop_collector
from mcpmeter.server.oidc import LOGINS_PER_MINUTE
from mcpmeter.storage import open_store

CLIENT_ID, CLIENT_SECRET = "mcpmeter-dashboard", "s3cret-of-the-client"


@pytest.fixture
def provider():
    p = Provider(CLIENT_ID, CLIENT_SECRET).start()
    yield p
    p.stop()


def sso_collector(tmp_path: Path, provider: Provider, *args: str):
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

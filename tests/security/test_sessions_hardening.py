"""Dashboard sessions under hostile use (issue 12, item 12): a live stream ends when its key
is revoked; one key's sign-ins never sign out another project's people; sessions are shared
by every worker of `mcpmeter serve --workers 2` (SQLite and PostgreSQL), and a sign-out holds
at the next request on any of them; only same-site paths are accepted as `next`.

Real collectors (`mcpmeter serve`), real SQLite files and PostgreSQL databases."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import Keys, make_keys, start_collector, stop_collector
from foundation_helpers import event
from mcpmeter.server.dashboard.sessions import safe_next
from mcpmeter.storage import open_store
from store_backends import BACKENDS, store_location

CSRF = {"X-MCPMeter-CSRF": "1"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(params=BACKENDS)
def two_projects(request, tmp_path: Path) -> Iterator[tuple[str, Keys, Keys, tuple[str, ...]]]:
    """A store location (of each backend) with projects weblab and other, and how to serve it."""
    with store_location(request.param, tmp_path) as db:
        store = open_store(str(db))
        a, b = make_keys(store, "weblab"), make_keys(store, "other")
        store.close()
        yield str(db), a, b, ()


def serve(db: str, tmp_path: Path, *args: str, **env: str):
    return start_collector(db, env={"MCPMETER_LOCAL_TRUST": "false", **env}, log=tmp_path / f"collector{len(args)}.log",
                           args=args)


def signed_in(url: str, key: str) -> str:
    """Sign in with ``key`` (as the dashboard does); the session cookie's value."""
    r = httpx.post(url + "/v1/session", json={"key": key}, headers=CSRF)
    assert r.status_code == 200, r.text
    return r.cookies["mcpmeter_session"]


def as_session(url: str, cookie: str, path: str = "/v1/usage/summary") -> int:
    """One request with the session cookie, on a new connection (so workers take turns)."""
    with httpx.Client(cookies={"mcpmeter_session": cookie}, timeout=20) as client:
        return client.get(url + path, params={"period": "7d"}).status_code


# ---- 12a: the live stream ends with its key ---------------------------------------------------------


class Stream:
    """A /v1/live stream read by a thread: (event, data) pairs in ``events``; None when it ended."""

    def __init__(self, url: str, key: str) -> None:
        self.events: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(url, key), daemon=True)
        self._thread.start()

    def _read(self, url: str, key: str) -> None:
        try:
            with httpx.stream("GET", url + "/v1/live", headers=bearer(key), timeout=httpx.Timeout(60, connect=10)) as r:
                name = None
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: "):
                        self.events.put((name, json.loads(line[6:])))
        except httpx.HTTPError as exc:
            self.events.put(("error", str(exc)))
        self.events.put(None)

    def next(self, timeout: float = 20):
        return self.events.get(timeout=timeout)


def test_a_live_stream_closes_when_its_key_is_revoked(two_projects, tmp_path):
    db, a, _, _ = two_projects
    c = serve(db, tmp_path)
    try:
        stream = Stream(c.url, a.read)
        assert stream.next()[0] == "hello"
        assert httpx.post(c.url + "/v1/events", json=[event(tool="before")], headers=bearer(a.ingest)).json()["accepted"] == 1
        name, data = stream.next()
        assert name == "calls" and data["recent"][0]["tool"] == "before"  # the stream delivers: the test can fail
        r = httpx.delete(c.url + "/v1/admin/keys/weblab-read", headers=bearer(a.admin))
        assert r.status_code == 200 and r.json()["revoked"] == 1
        assert httpx.post(c.url + "/v1/events", json=[event(tool="after")], headers=bearer(a.ingest)).json()["accepted"] == 1
        rest = []
        while (item := stream.next()) is not None:
            rest.append(item)
        assert [name for name, _ in rest] == ["revoked"], rest  # and nothing of the call made after the revocation
    finally:
        stop_collector(c)


# ---- 12b: caps per key and per project ---------------------------------------------------------------


def test_one_keys_sign_ins_never_sign_out_another_projects_people(two_projects, tmp_path):
    db, a, b, _ = two_projects
    c = serve(db, tmp_path)
    try:
        theirs = signed_in(c.url, b.read)
        mine = [signed_in(c.url, a.read) for _ in range(60)]  # beyond the per-key cap (50)
        assert as_session(c.url, theirs) == 200
        assert as_session(c.url, mine[-1]) == 200
        assert as_session(c.url, mine[0]) == 401  # the key's own oldest session made room
    finally:
        stop_collector(c)


def test_session_caps_evict_only_the_owners_then_the_projects_oldest(store):
    a, b = store.ensure_project("a"), store.ensure_project("b")
    later = int(time.time() * 1000) + 3_600_000
    store.add_session("b-1", b.id, "key-of-b", None, later, 2, 3)
    for i in range(5):
        store.add_session(f"a-{i}", a.id, "key-of-a", None, later, 2, 3)
    assert [store.session(f"a-{i}") is not None for i in range(5)] == [False, False, False, True, True]
    store.add_session("a2-0", a.id, "other-key-of-a", None, later, 2, 3)
    store.add_session("a2-1", a.id, "other-key-of-a", None, later, 2, 3)  # project a is full (3): its oldest goes
    assert store.session("a-3") is None and store.session("a-4") is not None
    assert store.session("b-1") is not None and store.count_sessions(b.id) == 1 and store.count_sessions(a.id) == 3
    store.add_session("old", b.id, "key-of-b", None, int(time.time() * 1000) - 1, 2, 3)
    assert store.session("old") is None  # expired: not a session
    assert store.drop_session("a-4") == 1 and store.session("a-4") is None
    assert store.take_once("x", later) and not store.take_once("x", later)
    assert store.collector_secret("s") == store.collector_secret("s") != store.collector_secret("t")


# ---- 12d: sessions shared by every worker --------------------------------------------------------------


def test_sessions_work_on_every_worker_and_end_everywhere_at_once(two_projects, tmp_path):
    db, a, _, _ = two_projects
    c = serve(db, tmp_path, "--workers", "2")
    try:
        cookie = signed_in(c.url, a.read)
        assert [as_session(c.url, cookie) for _ in range(20)] == [200] * 20
        with httpx.Client(cookies={"mcpmeter_session": cookie}, timeout=20) as client:
            assert client.delete(c.url + "/v1/session", headers=CSRF).status_code == 200
        assert [as_session(c.url, cookie) for _ in range(20)] == [401] * 20  # signed out on every worker
        cookie = signed_in(c.url, a.read)
        assert httpx.delete(c.url + "/v1/admin/keys/weblab-read", headers=bearer(a.admin)).status_code == 200
        assert [as_session(c.url, cookie) for _ in range(20)] == [401] * 20  # a revoked key's session too
    finally:
        stop_collector(c)


# ---- 12e: where a browser may be sent after signing in ---------------------------------------------------


@pytest.mark.parametrize("target", ["/\t/evil.example", "/\n/evil.example", "/\r\n/evil.example", "//evil.example",
                                    "/\\evil.example", "/\\/evil.example", "\\\\evil.example", "https://evil.example/",
                                    "javascript:alert(1)", " /x", "/x\x00", "/\u2028/evil.example", "/\u200b/evil",
                                    "evil.example", "", None, "/" + "a" * 3000])
def test_next_refuses_anything_a_browser_could_read_as_another_site(target):
    assert safe_next(target) == "/"


@pytest.mark.parametrize("target", ["/", "/?period=30d", "/tools/search%20web?server=weblab", "/admin", "/tools/caf\u00e9"])
def test_next_keeps_paths_on_this_site(target):
    assert safe_next(target) == target


def test_the_signin_page_is_given_only_a_safe_next(tmp_path):
    db = tmp_path / "c.db"
    c = serve(str(db), tmp_path)
    try:
        page = httpx.get(c.url + "/signin?next=/%09/evil.example").text
        assert 'data-next="/"' in page and "evil" not in page
        page = httpx.get(c.url + "/signin", params={"next": "/tools/x?period=30d"}).text
        assert 'data-next="/tools/x?period=30d"' in page
    finally:
        stop_collector(c)

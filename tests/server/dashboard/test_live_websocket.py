"""The live channel over a WebSocket (ws://…/v1/live), next to the Server-Sent Events one:
the same messages for the same filters, the same authentication, against a real `mcpmeter
serve` on both backends, with the `websockets` client."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from conftest import Collector, Keys, make_keys, start_collector, stop_collector
from foundation_helpers import event
from mcpmeter.storage import open_store
from store_backends import store_location


class Locked(NamedTuple):
    collector: Collector
    a: Keys
    b: Keys


@pytest.fixture(params=["sqlite", "postgres"])
def locked(request, tmp_path: Path) -> Iterator[Locked]:
    """A collector that trusts nobody (every caller needs a key), projects a and b."""
    with store_location(request.param, tmp_path) as url:
        store = open_store(url)
        a, b = make_keys(store, "a"), make_keys(store, "b")
        store.close()
        c = start_collector(url, env={"MCPMETER_LOCAL_TRUST": "false"}, log=tmp_path / "collector.log")
        try:
            yield Locked(c, a, b)
        finally:
            stop_collector(c)


def ws_url(c: Collector, query: str = "") -> str:
    return c.url.replace("http://", "ws://") + "/v1/live" + (f"?{query}" if query else "")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def frames(ws, count: int, timeout: float = 10) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    return [json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic()))) for _ in range(count)]


class SSE:
    """A Server-Sent Events reader: (event, data) pairs, read as they are asked for."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.messages: list[tuple[str, dict]] = []
        self._client = httpx.Client(timeout=httpx.Timeout(10))
        self._response = self._client.send(self._client.build_request("GET", url, headers=headers), stream=True)
        assert self._response.status_code == 200, self._response.read()
        self._lines = self._response.iter_lines()

    def wait(self, count: int) -> list[tuple[str, dict]]:
        name = None
        while len(self.messages) < count:
            line = next(self._lines)
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name:
                self.messages.append((name, json.loads(line[6:])))
        return self.messages[:count]

    def close(self) -> None:
        self._response.close()
        self._client.close()


def test_the_websocket_carries_what_the_sse_stream_carries(locked):
    c, a, _ = locked
    query = "server=weblab&tool=search"
    sse = SSE(c.url + "/v1/live?" + query, bearer(a.read))
    try:
        with connect(ws_url(c, query), additional_headers=bearer(a.read), open_timeout=10) as ws:
            hello = frames(ws, 1)[0]
            assert hello["event"] == "hello" and hello["data"]["project"] == "a"
            assert sse.wait(1)[0][0] == "hello"
            calls = [event(server="weblab", tool="search", client_name="claude-code", duration_ms=40.0, user="ann"),
                     event(server="weblab", tool="search", ok=False, error_type="TimeoutError", error_message="slow",
                           duration_ms=3000.0, user="bob"),
                     event(server="weblab", tool="fetch", user="ann"),  # another tool: not for these subscribers
                     event(server="other", tool="search", user="ann")]  # another server: neither
            assert httpx.post(c.url + "/v1/events", json=calls, headers=bearer(a.ingest)).json()["accepted"] == 4
            message = frames(ws, 1)[0]
            assert message["event"] == "calls"
            data = message["data"]
            assert (data["calls"], data["errors"]) == (2, 1)
            assert {r["tool"] for r in data["recent"]} == {"search"} and {r["server"] for r in data["recent"]} == {"weblab"}
            assert sum(row[3] for row in data["counts"]) == 2
            assert sse.wait(2)[1] == ("calls", data)  # the very message the SSE stream got
            # a call of another project never reaches project a's subscribers
            assert httpx.post(c.url + "/v1/events", json=[event(server="weblab", tool="search")],
                              headers=bearer(locked.b.ingest)).json()["accepted"] == 1
            assert httpx.post(c.url + "/v1/events", json=[event(server="weblab", tool="search", user="cy")],
                              headers=bearer(a.ingest)).json()["accepted"] == 1
            after = frames(ws, 1)[0]
            assert after["data"]["calls"] == 1 and after["data"]["recent"][0]["ts"] == sse.wait(3)[2][1]["recent"][0]["ts"]
            ws.send("anything")  # client frames are ignored, the channel stays open
            health = httpx.get(c.url + "/v1/admin/health", headers=bearer(a.admin)).json()
            assert health["live_subscribers"] == 2  # of the project
    finally:
        sse.close()
    deadline = time.monotonic() + 10
    while httpx.get(c.url + "/v1/admin/health", headers=bearer(a.admin)).json()["live_subscribers"]:
        assert time.monotonic() < deadline, "a closed WebSocket still holds a live subscription"
        time.sleep(0.05)


def refusal(url: str, **options: Any) -> tuple[int, dict]:
    with pytest.raises(InvalidStatus) as exc:
        with connect(url, open_timeout=10, **options):
            pass
    response = exc.value.response
    return response.status_code, json.loads(response.body or b"{}")


def test_the_websocket_needs_the_same_credentials_as_the_sse_stream(locked):
    c, a, b = locked
    status, body = refusal(ws_url(c))
    assert status == 401 and body["error"] == "an API key is required" and body["hint"]
    assert httpx.get(c.url + "/v1/live").status_code == 401  # the SSE stream says the same
    status, body = refusal(ws_url(c), additional_headers=bearer(a.ingest))
    assert status == 403 and "`read`" in body["error"]
    status, body = refusal(ws_url(c), additional_headers={"X-API-Key": "mcpm_guess"})
    assert status == 401 and body["error"] == "unknown API key"
    with connect(ws_url(c), additional_headers={"X-API-Key": b.read}, open_timeout=10) as ws:
        assert frames(ws, 1)[0]["data"]["project"] == "b"


def test_a_signed_in_browsers_cookie_works_only_from_the_collectors_own_origin(locked):
    c, a, _ = locked
    r = httpx.post(c.url + "/v1/session", json={"key": a.read}, headers={"X-MCPMeter-CSRF": "1"})
    assert r.status_code == 200, r.text
    cookie = "; ".join(f"{k}={v}" for k, v in r.cookies.items())
    own = c.url  # what a page of the dashboard sends as Origin
    with connect(ws_url(c), additional_headers={"Cookie": cookie}, origin=own, open_timeout=10) as ws:
        assert frames(ws, 1)[0]["data"]["project"] == "a"
    status, body = refusal(ws_url(c), additional_headers={"Cookie": cookie}, origin="http://evil.example")
    assert status == 403 and "evil.example" in body["error"]
    # a key presented by a program is not a browser's ambient credential: any Origin may use it
    with connect(ws_url(c), additional_headers=bearer(a.read), origin="http://tool.example", open_timeout=10) as ws:
        assert frames(ws, 1)[0]["event"] == "hello"


def test_the_collector_stops_promptly_with_a_websocket_open(tmp_path):
    c = start_collector(tmp_path / "collector.db")
    try:
        with connect(ws_url(c), open_timeout=10) as ws:  # loopback trusted: the local case
            assert frames(ws, 1)[0]["event"] == "hello"
            started = time.monotonic()
            c.process.terminate()
            with pytest.raises(ConnectionClosed):
                frames(ws, 1, timeout=8)
            c.process.wait(timeout=8)
            assert time.monotonic() - started < 8
    finally:
        stop_collector(c)


def test_a_revoked_key_ends_its_websocket_before_the_next_calls_are_sent(locked):
    c, a, _ = locked
    with connect(ws_url(c), additional_headers=bearer(a.read), open_timeout=10) as ws:
        assert frames(ws, 1)[0]["event"] == "hello"
        r = httpx.delete(c.url + "/v1/admin/keys/a-read", headers=bearer(a.admin))
        assert r.status_code == 200, r.text
        assert httpx.post(c.url + "/v1/events", json=[event(tool="after_revocation")], headers=bearer(a.ingest)).json()["accepted"] == 1
        message = frames(ws, 1)[0]
        assert message["event"] == "revoked" and "no longer" in message["data"]["reason"]
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008

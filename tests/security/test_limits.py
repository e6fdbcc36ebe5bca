"""Limits everywhere, each with a clear error: body size, events per batch, string lengths,
attributes, distinct servers and tools per project, and open connections."""

from __future__ import annotations

import contextlib
import socket

import httpx
from security_helpers import wait_until
from starlette.testclient import TestClient

from conftest import make_keys, start_collector, stop_collector
from foundation_helpers import event, stored_count
from mcpmeter.server.collector import CollectorConfig, create_app
from mcpmeter.storage import open_store


def test_distinct_servers_and_tools_per_project_are_capped_with_a_reason(store):
    keys = make_keys(store)
    other = make_keys(store, "other")
    config = CollectorConfig()
    config.max_servers, config.max_tools = 2, 3
    with TestClient(create_app(store, config)) as c:
        auth = {"Authorization": f"Bearer {keys.ingest}"}
        batch = [event(server="a", tool="t1"), event(server="a", tool="t2"), event(server="b", tool="t1"),
                 event(server="c", tool="t1"), event(server="b", tool="t9"), event(server="a", tool="t1")]
        body = c.post("/v1/events", json=batch, headers=auth).json()
        assert body["accepted"] == 4
        reasons = {r["index"]: r["error"] for r in body["rejected"]}
        assert set(reasons) == {3, 4}
        assert "2 distinct servers, its limit" in reasons[3] and "MCPMETER_MAX_SERVERS_PER_PROJECT" in reasons[3]
        assert "3 distinct tools, its limit" in reasons[4] and "MCPMETER_MAX_TOOLS_PER_PROJECT" in reasons[4]
        # known names keep working; other projects have their own budget
        assert c.post("/v1/events", json=[event(server="b", tool="t1")], headers=auth).json()["accepted"] == 1
        r = c.post("/v1/events", json=[event(server="c", tool="t1")], headers={"Authorization": f"Bearer {other.ingest}"})
        assert r.json()["accepted"] == 1
    # a new collector on the same store knows what is there already
    with TestClient(create_app(store, config)) as c:
        r = c.post("/v1/events", json=[event(server="zz", tool="t1")], headers={"Authorization": f"Bearer {keys.ingest}"})
        assert r.status_code == 422 and "distinct servers" in r.json()["rejected"][0]["error"]
    assert stored_count(store) == 6


def test_size_count_and_length_limits_answer_clearly(store):
    keys = make_keys(store)
    config = CollectorConfig()
    config.max_body_bytes = 20_000
    with TestClient(create_app(store, config)) as c:
        auth = {"Authorization": f"Bearer {keys.ingest}"}
        r = c.post("/v1/events", json=[event() for _ in range(200)], headers=auth)
        assert r.status_code == 413 and "larger than 20000 bytes" in r.json()["error"] and "MCPMETER_MAX_BODY_BYTES" in r.json()["hint"]
        r = c.post("/v1/events", json=[event(server="s" * 201), event(attributes={f"k{i}": i for i in range(33)}),
                                        event(attributes={"k": "v" * 513}), event(user="u" * 513)], headers=auth)
        assert r.status_code == 422
        errors = [x["error"] for x in r.json()["rejected"]]
        assert "length <= 200" in errors[0] and "$.server" in errors[0]
        assert "length <= 32" in errors[1] and "$.attributes" in errors[1]
        assert "length <= 512" in errors[2]
        assert "length <= 512" in errors[3] and "$.user" in errors[3]
    config = CollectorConfig()
    config.limits = config.limits._replace(max_events=10)
    with TestClient(create_app(store, config)) as c:
        r = c.post("/v1/events", json=[event() for _ in range(11)], headers={"Authorization": f"Bearer {keys.ingest}"})
        assert r.status_code == 400 and "11 events in one batch; the limit is 10" in r.json()["error"]
    assert stored_count(store) == 0


def test_connections_beyond_the_limit_are_503(tmp_path):
    """At MCPMETER_MAX_CONNECTIONS a new connection takes the place of the one idle longest;
    when every connection is busy with a request, the next one is answered 503."""
    db = tmp_path / "c.db"
    open_store(str(db)).close()
    c = start_collector(db, env={"MCPMETER_MAX_CONNECTIONS": "3"})
    held = []
    try:
        port = int(c.url.rsplit(":", 1)[1])
        for _ in range(3):  # idle keep-alive connections count
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert b"200 OK" in s.recv(4096)
            held.append(s)
        assert httpx.get(c.url + "/health").status_code == 200  # the longest idle made room
        held[0].settimeout(10)
        while held[0].recv(4096):  # ... and was closed (after the rest of its answer)
            pass
        for s in held:
            s.close()
        held.clear()
        with contextlib.ExitStack() as streams:  # three requests in flight: live streams
            client = streams.enter_context(httpx.Client(timeout=10))
            for _ in range(3):
                response = streams.enter_context(client.stream("GET", c.url + "/v1/live"))
                assert response.status_code == 200
            r = httpx.get(c.url + "/health")
            assert r.status_code == 503
        wait_until(lambda: httpx.get(c.url + "/health").status_code == 200, 10, "room for a connection again")
    finally:
        for s in held:
            s.close()
        stop_collector(c)

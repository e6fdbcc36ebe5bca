"""The name caps hold whatever names a server: events, measurements, server events (issue 12, item 16)."""

from __future__ import annotations

import json

from starlette.testclient import TestClient

from foundation_helpers import event, everything
from mcpmeter.server.collector import CollectorConfig, create_app

LOOPBACK = ("127.0.0.1", 5000)


def post(c: TestClient, path: str, body: object):
    return c.post(path, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})


def metric(server: str) -> dict:
    return {"server": server, "metrics": [{"name": "jobs", "value": 1, "type": "counter"}]}


def test_measurements_and_server_events_are_held_to_the_server_cap(store):
    """Before: measurements and server events added servers beyond MCPMETER_MAX_SERVERS_PER_PROJECT."""
    config = CollectorConfig(max_servers=2)
    with TestClient(create_app(store, config), client=LOOPBACK, base_url="http://127.0.0.1") as c:
        assert post(c, "/v1/measurements", metric("s1")).status_code == 200
        assert post(c, "/v1/server-events", [{"server": "s2", "type": "deploy"}]).status_code == 200
        r = post(c, "/v1/measurements", metric("s3"))
        assert r.status_code == 422 and "MCPMETER_MAX_SERVERS_PER_PROJECT" in r.json()["error"]
        r = post(c, "/v1/server-events", [{"server": "s1", "type": "restart"}, {"server": "s4", "type": "deploy"}])
        assert r.status_code == 422 and "'s4'" in r.json()["error"]
        assert len(store.server_events(everything(store))) == 1  # the whole request refused: not half of it
        refused = post(c, "/v1/events", [event(server="s3")]).json()
        assert "MCPMETER_MAX_SERVERS_PER_PROJECT" in refused["rejected"][0]["error"]
        assert post(c, "/v1/measurements", metric("s2")).status_code == 200  # a known server is welcome
    # A collector started later counts the servers that only measurements and server events named.
    with TestClient(create_app(store, config), client=LOOPBACK, base_url="http://127.0.0.1") as c:
        assert "MCPMETER_MAX_SERVERS_PER_PROJECT" in post(c, "/v1/events", [event(server="s5")]).json()["rejected"][0]["error"]
        assert post(c, "/v1/events", [event(server="s1")]).json()["accepted"] == 1
    assert {d[1] for d in store.measurement_days(everything(store))} == {"s1", "s2"}

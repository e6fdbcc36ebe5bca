"""Counts are exact under retries, for events older than the retention (issue 12, item 3) and
for measurements and server events sent without an id (item 4); on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from foundation_helpers import event, everything, now_ms
from mcpmeter.retention import prune
from mcpmeter.server.collector import create_app

LOOPBACK = ("127.0.0.1", 5000)
DAY = 86_400_000


def post(c: TestClient, path: str, body: object):
    return c.post(path, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})


def counted(store, name: str) -> tuple[int, float]:
    """(count, sum) of measurement ``name`` over every day the store holds."""
    days = [d for d in store.measurement_days(everything(store), name)]
    return sum(d[5] for d in days), sum(d[6] for d in days)


@pytest.fixture
def short_retention(store, monkeypatch):
    """A collector whose raw retention (2 days) is shorter than the maximum event age (180)."""
    monkeypatch.setenv("MCPMETER_RETENTION_DAYS", "2")
    with TestClient(create_app(store), client=LOOPBACK, base_url="http://127.0.0.1") as c:
        yield c


def test_an_event_older_than_the_retention_is_refused_so_a_retry_after_pruning_counts_nothing(short_retention, store):
    """Before: the 3-day-old event was accepted, pruned with its id, and accepted again."""
    old, recent = event(ts=now_ms() - 3 * DAY), event(ts=now_ms() - DAY)
    first = post(short_retention, "/v1/events", [old, recent]).json()
    assert first["accepted"] == 1 and [r["id"] for r in first["rejected"]] == [old["id"]]
    assert "MCPMETER_RETENTION_DAYS" in first["rejected"][0]["error"]
    removed = prune(store)  # the real prune, with the collector's retention
    assert removed["events"] == 0
    again = post(short_retention, "/v1/events", [old, recent]).json()
    assert again["accepted"] == 0 and again["duplicates"] == 1 and len(again["rejected"]) == 1
    assert store.count_events(everything(store), kind=None) == 1


def test_a_measurement_older_than_the_retention_is_refused(short_retention, store):
    body = {"server": "weblab", "metrics": [{"name": "jobs", "value": 1, "type": "counter", "timestamp": now_ms() - 3 * DAY}]}
    r = post(short_retention, "/v1/measurements", body)
    assert r.status_code == 422 and "MCPMETER_RETENTION_DAYS" in r.json()["error"]
    prune(store)
    assert post(short_retention, "/v1/measurements", body).status_code == 422
    assert counted(store, "jobs") == (0, 0)


def test_a_retry_stays_a_duplicate_across_a_real_prune(short_retention, store):
    """Events within the retention survive the prune with their ids: their retry is a duplicate."""
    batch = [event(ts=now_ms() - DAY), event()]
    assert post(short_retention, "/v1/events", batch).json()["accepted"] == 2
    prune(store)
    assert post(short_retention, "/v1/events", batch).json() == {"accepted": 0, "duplicates": 2, "rejected": []}


@pytest.fixture
def client(store):
    with TestClient(create_app(store), client=LOOPBACK, base_url="http://127.0.0.1") as c:
        yield c


@pytest.mark.parametrize("timestamp", [None, "now"])
def test_identical_increments_in_one_request_all_count_and_a_retry_counts_none(client, store, timestamp):
    """The id of a measurement sent without one is its content as sent and its rank among
    identical ones in the request - never the receive time. Before: the two identical
    increments of one request counted once, and (without timestamp) a retry counted again."""
    inc = {"name": "jobs", "value": 1, "type": "counter", "tags": {"queue": "q1"}}
    if timestamp:
        inc["timestamp"] = now_ms() - 60_000
    body = {"server": "weblab", "metrics": [inc, inc, {**inc, "value": 2}]}
    assert post(client, "/v1/measurements", body).json() == {"accepted": 3, "duplicates": 0, "rejected": []}
    assert post(client, "/v1/measurements", body).json() == {"accepted": 0, "duplicates": 3, "rejected": []}
    assert counted(store, "jobs") == (3, 4.0)
    # one more increment in a later request (a request of two) is new; the first two are its retry
    assert post(client, "/v1/measurements", {"server": "weblab", "metrics": [inc, inc, inc]}).json()["accepted"] == 1
    assert counted(store, "jobs") == (4, 5.0)


def test_a_sender_id_decides_alone(client, store):
    inc = {"name": "jobs", "value": 1, "type": "counter"}
    body = {"server": "weblab", "metrics": [{**inc, "id": "a"}, {**inc, "id": "b"}, {**inc, "id": "a"}]}
    assert post(client, "/v1/measurements", body).json()["accepted"] == 2
    assert post(client, "/v1/measurements", body).json()["accepted"] == 0
    assert counted(store, "jobs") == (2, 2.0)


def test_server_events_without_id_follow_the_same_rule(client, store):
    deploy = {"server": "weblab", "type": "deploy", "version": "1.4.0", "message": "rolled out"}
    assert post(client, "/v1/server-events", [deploy, deploy]).json()["accepted"] == 2
    assert post(client, "/v1/server-events", [deploy, deploy]).json() == {"accepted": 0, "duplicates": 2, "rejected": []}
    other = {**deploy, "attributes": {"region": "eu"}}  # other attributes: another event
    assert post(client, "/v1/server-events", [other]).json()["accepted"] == 1
    assert len(store.server_events(everything(store))) == 3

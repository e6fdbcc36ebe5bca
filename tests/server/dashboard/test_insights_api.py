"""The answers behind the insight panels over HTTP, on both backends: custom measurements for
sub-day periods (the hour, not the whole UTC day) with several names at once, and the
category filter on every question."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from conftest import make_keys
from foundation_helpers import now_ms
from mcpmeter.analytics.questions import QUESTIONS
from mcpmeter.server.collector import CollectorConfig, create_app

HOUR = 3_600_000


@pytest.fixture
def client(store):
    keys = make_keys(store)
    with TestClient(create_app(store, CollectorConfig(local_trust=False))) as c:
        c.headers["Authorization"] = f"Bearer {keys.read}"
        c.ingest = keys.ingest  # type: ignore[attr-defined]
        yield c


def measure(c: TestClient, name: str, value: float, ts: int) -> None:
    r = c.post("/v1/measurements", json={"server": "shop", "metrics": [{"name": name, "value": value, "timestamp": ts}]},
               headers={"Authorization": f"Bearer {c.ingest}"})  # type: ignore[attr-defined]
    assert r.status_code == 200, r.text


def test_period_1h_answers_for_the_hour_not_the_whole_day(client):
    """Values hours earlier (the same UTC day or not) stay out of period=1h; 6h and 12h take what they cover."""
    now = now_ms()
    hour = now - now % HOUR
    measure(client, "queue", 5.0, hour + 1)  # this clock hour
    measure(client, "queue", 100.0, hour - 3 * HOUR)  # three hours ago: in 6h and 12h, not in 1h
    measure(client, "queue", 1000.0, hour - 9 * HOUR)  # nine hours ago: only in 12h
    measure(client, "depth", 7.0, hour + 2)
    for period, values in (("1h", [5.0]), ("6h", [100.0, 5.0]), ("12h", [1000.0, 100.0, 5.0])):
        r = client.get("/v1/usage/measurements", params={"period": period, "name": "queue"})
        assert r.status_code == 200, r.text
        [series] = r.json()["series"]
        assert [p["sum"] for p in series["points"]] == values, period
        assert (series["count"], series["min"], series["max"]) == (len(values), min(values), max(values))
        assert r.json()["grain"] == "hour"
    for params in ([("name", "queue"), ("name", "depth")], [("name", "queue,depth")], [("name", "depth, queue")]):
        r = client.get("/v1/usage/measurements", params=[("period", "1h"), *params])
        assert r.status_code == 200, r.text
        assert r.json()["names"] == ["depth", "queue"]
        assert {(s["name"], s["sum"]) for s in r.json()["series"]} == {("queue", 5.0), ("depth", 7.0)}
    assert {s["name"] for s in client.get("/v1/usage/measurements", params={"period": "1h"}).json()["series"]} == {"queue", "depth"}


def test_every_question_takes_the_category_filter(client):
    now = now_ms()
    calls = [{"id": f"c{i}", "kind": "tool_call", "ts": now - i * 1000, "server": "shop", "tool": tool, "category": category,
              "ok": True, "user": f"u{i}"} for i, (tool, category) in enumerate(
                  [("search", "read"), ("search", "read"), ("buy", "write"), ("search", None)])]
    r = client.post("/v1/events", json=calls, headers={"Authorization": f"Bearer {client.ingest}"})  # type: ignore[attr-defined]
    assert r.status_code == 200 and r.json()["accepted"] == 4, r.text
    assert client.get("/v1/usage/summary", params={"period": "1d", "category": "read"}).json()["calls"] == 3  # the tool's category
    assert client.get("/v1/usage/summary", params={"period": "1d", "category": "write"}).json()["calls"] == 1
    assert client.get("/v1/usage/summary", params={"period": "1d", "category": "none"}).json()["calls"] == 0
    for name, question in QUESTIONS.items():
        assert "category" in {p.name for p in question.parameters}, name
        r = client.get(question.path, params={"period": "1d", "category": "read"})
        assert r.status_code == 200, (name, r.text)
    spec = client.get("/openapi.json").json()
    assert any(p["name"] == "category" for p in spec["paths"]["/v1/usage/tools"]["get"]["parameters"])

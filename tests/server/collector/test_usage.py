"""GET /v1/usage/summary: the stakeholder questions answered over HTTP, with filters."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from foundation_helpers import event, now_ms
from mcpmeter.analytics.periods import iso
from mcpmeter.server.collector import create_app

DAY = 86_400_000


@pytest.fixture
def client(store):
    with TestClient(create_app(store), client=("127.0.0.1", 5000), base_url="http://127.0.0.1") as c:
        recent = now_ms() - 60_000
        batch = [
            event(ts=recent, server="weblab", tool="search", user="u1", client_name="cursor", duration_ms=10),
            event(ts=recent, server="weblab", tool="search", user="u2", client_name="claude-code", duration_ms=20),
            event(ts=recent, server="weblab", tool="search", user="u1", client_name="cursor", duration_ms=30,
                  ok=False, error_type="TimeoutError"),
            event(ts=recent, server="weblab", tool="details", user="u3", client_name="cursor", duration_ms=40),
            event(ts=recent, server="time", tool="now", user="u1", client_name="cursor", duration_ms=1),
            event(ts=recent, kind="session_start", tool=None, user="u9"),
            event(ts=now_ms() - 10 * DAY, server="weblab", tool="old_tool", user="u4", client_name="cursor"),
        ]
        assert c.post("/v1/events", json=batch).json()["accepted"] == len(batch)
        yield c


def get(c: TestClient, **params):
    return c.get("/v1/usage/summary", params=params)


def test_the_summary_answers_who_what_and_whether_it_works(client):
    s = get(client).json()
    assert s["project"] == "default"
    assert (s["calls"], s["errors"], s["users"]) == (5, 1, 3)  # the session_start is not a call
    assert s["success_rate"] == pytest.approx(0.8)
    assert [(t["server"], t["tool"], t["calls"], t["errors"], t["users"]) for t in s["tools"]] == [
        ("weblab", "search", 3, 1, 2), ("time", "now", 1, 0, 1), ("weblab", "details", 1, 0, 1),
    ]
    assert s["tools"][0]["share"] == pytest.approx(0.6)
    assert s["latency_ms"]["p50"] is not None
    assert s["calls_last_7d"] == 5


def test_the_period_decides_what_counts(client):
    assert get(client, period="7d").json()["calls"] == 5
    month = get(client, period="30d").json()
    assert month["calls"] == 6 and month["users"] == 4
    assert "old_tool" in [t["tool"] for t in month["tools"]]


def test_from_and_to_select_an_explicit_window(client):
    s = get(client, **{"from": iso(now_ms() - 12 * DAY), "to": iso(now_ms() - 8 * DAY)}).json()
    assert s["calls"] == 1 and [t["tool"] for t in s["tools"]] == ["old_tool"]
    by_ms = get(client, **{"from": str(now_ms() - 12 * DAY), "to": str(now_ms() - 8 * DAY)}).json()
    assert by_ms["calls"] == 1


@pytest.mark.parametrize(
    ("params", "calls"),
    [({"server": "weblab"}, 4), ({"server": "time"}, 1), ({"tool": "search"}, 3), ({"client": "claude-code"}, 1),
     ({"server": "weblab", "tool": "details"}, 1), ({"server": "nope"}, 0)],
)
def test_filters(client, params, calls):
    s = get(client, **params).json()
    assert s["calls"] == calls
    assert sum(t["calls"] for t in s["tools"]) == calls


def test_an_empty_answer_is_well_formed(client):
    s = get(client, server="nope").json()
    assert (s["calls"], s["users"], s["tools"], s["success_rate"]) == (0, 0, [], None)


@pytest.mark.parametrize(
    ("params", "fragment"),
    [({"period": "fortnight"}, "period 'fortnight' is not understood"),
     ({"period": "0d"}, "not understood"),
     ({"period": "9999d"}, "longer than 400 days"),
     ({"from": "yesterday"}, "from='yesterday' is not a time"),
     ({"from": iso(now_ms()), "to": iso(now_ms() - DAY)}, "`from` must be before `to`"),
     ({"colour": "blue"}, "unknown query parameter(s): colour")],
)
def test_bad_parameters_are_400_saying_what_was_wrong(client, params, fragment):
    r = get(client, **params)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]


@pytest.mark.parametrize("params", [{"period": "fortnight"}, {"from": "yesterday"}, {"colour": "blue"}])
def test_a_bad_parameter_comes_with_a_hint(client, params):
    hint = get(client, **params).json()["hint"]
    assert any(word in hint for word in ("7d", "RFC 3339", "allowed"))


def test_the_openapi_document_lists_the_summary_parameters(client):
    op = client.get("/openapi.json").json()["paths"]["/v1/usage/summary"]["get"]
    assert {"period", "from", "to", "server", "tool", "client"} <= {p["name"] for p in op["parameters"]}

"""POST /v1/events: every bad input gets a clear 4xx and nothing invalid is stored."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest
from starlette.testclient import TestClient

from conftest import make_keys
from foundation_helpers import event, now_ms, stored_count, stored_events
from mcpmeter.events import Limits
from mcpmeter.server.collector import CollectorConfig, create_app

LOOPBACK = ("127.0.0.1", 5000)


@pytest.fixture
def client(store):
    """The collector app seen from loopback (trusted: the default project, no key)."""
    with TestClient(create_app(store), client=LOOPBACK, base_url="http://127.0.0.1") as c:
        yield c


def post(c: TestClient, payload, **kwargs):
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    return c.post("/v1/events", content=json.dumps(payload).encode(), headers=headers, **kwargs)


def assert_error(response, status: int, *fragments: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    for fragment in fragments:
        assert fragment in body["error"], body
    assert body.get("hint") or status == 422, body
    return body


# ---- accepted input -------------------------------------------------------------------------


def test_a_valid_batch_is_stored_and_counted(client, store):
    batch = [event(tool="search"), event(tool="details", ok=False, error_type="TimeoutError")]
    r = post(client, batch)
    assert r.status_code == 200
    assert r.json() == {"accepted": 2, "duplicates": 0, "rejected": []}
    rows = {row["event_id"]: row for row in stored_events(store)}
    assert set(rows) == {e["id"] for e in batch}
    assert rows[batch[1]["id"]]["error_type"] == "TimeoutError" and rows[batch[1]["id"]]["ok"] == 0


def test_the_events_object_form_is_accepted(client, store):
    r = post(client, {"events": [event(), event()]})
    assert r.json()["accepted"] == 2
    assert stored_count(store) == 2


def test_a_gzip_body_is_accepted(client, store):
    body = gzip.compress(json.dumps([event(), event(), event()]).encode())
    r = client.post("/v1/events", content=body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 3
    assert stored_count(store) == 3


def test_rfc3339_and_epoch_ms_timestamps_are_stored_as_epoch_ms(client, store):
    ms = now_ms() // 1000 * 1000
    from mcpmeter.analytics.periods import iso

    r = post(client, [event(id="as-ms", ts=ms), event(id="as-text", ts=iso(ms))])
    assert r.json()["accepted"] == 2
    assert {row["event_id"]: row["ts"] for row in stored_events(store)} == {"as-ms": ms, "as-text": ms}


def test_a_retried_batch_is_stored_once_and_answered_as_duplicates(client, store):
    batch = [event(), event(), event()]
    assert post(client, batch).json() == {"accepted": 3, "duplicates": 0, "rejected": []}
    assert post(client, batch).json() == {"accepted": 0, "duplicates": 3, "rejected": []}
    assert post(client, [*batch[:1], event()]).json() == {"accepted": 1, "duplicates": 1, "rejected": []}
    assert stored_count(store) == 4


def test_an_id_repeated_inside_one_batch_is_stored_once(client, store):
    e = event()
    body = post(client, [e, dict(e, tool="other"), event()]).json()
    assert body == {"accepted": 2, "duplicates": 1, "rejected": []}  # every event of the batch is accounted for
    rows = stored_events(store)
    assert len(rows) == 2
    assert [r["tool"] for r in rows if r["event_id"] == e["id"]] == ["search"]  # the first one wins


def test_the_same_id_in_two_projects_is_two_events(store):
    a, b = make_keys(store, "a"), make_keys(store, "b")
    e = event()
    with TestClient(create_app(store)) as c:
        for k in (a, b):
            r = post(c, [e], headers={"Authorization": f"Bearer {k.ingest}"})
            assert r.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    assert [row["event_id"] for row in stored_events(store, "a")] == [e["id"]]
    assert [row["event_id"] for row in stored_events(store, "b")] == [e["id"]]


def test_raw_users_are_never_stored(client, store):
    post(client, [event(user="alice@example.com"), event(user="bob@example.com"), event(user="alice@example.com")])
    hashes = [row["user_hash"] for row in stored_events(store)]
    assert hashes[0] == hashes[2] != hashes[1]
    assert not {"alice@example.com", "bob@example.com"} & set(hashes)


# ---- a mixed batch ----------------------------------------------------------------------------


def test_a_mixed_batch_stores_the_valid_events_and_lists_the_rejected_ones(client, store):
    good = [event(), event()]
    batch = [good[0], event(server=5), good[1], event(extra=1), event(ts=now_ms() - 400 * 86_400_000)]
    r = post(client, batch)
    assert r.status_code == 200
    body = r.json()
    assert body["accepted"] == 2 and body["duplicates"] == 0
    assert [(x["index"], x["id"]) for x in body["rejected"]] == [(1, batch[1]["id"]), (3, batch[3]["id"]), (4, batch[4]["id"])]
    assert "$.server" in body["rejected"][0]["error"]
    assert "unknown field `extra`" in body["rejected"][1]["error"]
    assert "days old" in body["rejected"][2]["error"]
    assert {row["event_id"] for row in stored_events(store)} == {e["id"] for e in good}


# ---- refused input: nothing stored --------------------------------------------------------------


def test_malformed_json_is_400(client, store):
    r = client.post("/v1/events", content=b'[{"id": "x", ', headers={"Content-Type": "application/json"})
    assert_error(r, 400, "not a JSON array")
    assert stored_count(store) == 0


@pytest.mark.parametrize("payload", [{"event": []}, {"events": [], "more": 1}, "a string", 3])
def test_a_body_of_the_wrong_shape_is_400(client, store, payload):
    assert_error(post(client, payload), 400)
    assert stored_count(store) == 0


@pytest.mark.parametrize(
    ("override", "field"),
    [({"server": 5}, "$.server"), ({"ok": "yes"}, "$.ok"), ({"duration_ms": "slow"}, "$.duration_ms"),
     ({"ts": "last tuesday"}, "$.ts"), ({"tool": ["a"]}, "$.tool")],
)
def test_wrong_types_are_422_with_reasons_naming_the_field(client, store, override, field):
    batch = [event(**override), event(**override)]
    r = post(client, batch)
    body = assert_error(r, 422, "all 2 events were rejected")
    assert body["accepted"] == 0
    assert [x["index"] for x in body["rejected"]] == [0, 1]
    assert all(field in x["error"] for x in body["rejected"])
    assert stored_count(store) == 0


def test_oversized_strings_are_rejected(client, store):
    r = post(client, [event(tool="t" * 201), event(user="u" * 513), event(attributes={"k": "v" * 600})])
    body = assert_error(r, 422)
    assert [x["index"] for x in body["rejected"]] == [0, 1, 2]
    assert "length <= 200" in body["rejected"][0]["error"] and "$.tool" in body["rejected"][0]["error"]
    assert stored_count(store) == 0


def test_unknown_fields_are_rejected(client, store):
    body = assert_error(post(client, [event(arguments={"q": "secret"})]), 422)
    assert body["rejected"][0]["error"] == "unknown field `arguments`"
    assert stored_count(store) == 0


def test_too_far_in_the_past_or_future_is_rejected(client, store):
    day = 86_400_000
    body = assert_error(post(client, [event(ts=now_ms() - 181 * day), event(ts=now_ms() + 2 * day)]), 422)
    assert "older than 180 days" in body["rejected"][0]["error"]
    assert "future" in body["rejected"][1]["error"]
    assert stored_count(store) == 0


def test_too_many_events_is_400(store):
    config = CollectorConfig(limits=Limits(max_events=5))
    with TestClient(create_app(store, config), client=LOOPBACK, base_url="http://127.0.0.1") as c:
        assert_error(post(c, [event() for _ in range(6)]), 400, "6 events in one batch; the limit is 5")
        assert stored_count(store) == 0
        assert post(c, [event() for _ in range(5)]).json()["accepted"] == 5


@pytest.fixture
def small_client(store):
    with TestClient(create_app(store, CollectorConfig(max_body_bytes=4096)), client=LOOPBACK, base_url="http://127.0.0.1") as c:
        yield c


def test_an_oversized_body_is_413(small_client, store):
    batch = [event(attributes={"pad": "x" * 500}) for _ in range(10)]
    assert len(json.dumps(batch)) > 4096
    assert_error(post(small_client, batch), 413, "larger than 4096 bytes")
    assert stored_count(store) == 0


def test_an_oversized_body_without_content_length_is_413(small_client, store):
    chunks = [json.dumps([event(attributes={"pad": "x" * 500}) for _ in range(10)]).encode()]
    r = small_client.post("/v1/events", content=iter(chunks), headers={"Content-Type": "application/json"})
    assert_error(r, 413)
    assert stored_count(store) == 0


def test_a_gzip_bomb_is_413(small_client, store):
    bomb = gzip.compress(b"[" + b" " * 3_000_000 + b"]", compresslevel=9)  # 1000:1
    assert len(bomb) < 4096
    r = small_client.post("/v1/events", content=bomb, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert_error(r, 413)
    assert stored_count(store) == 0


def test_a_gzip_body_that_fits_compressed_but_not_inflated_is_413(small_client, store):
    batch = [event(attributes={"pad": "x" * 500}) for _ in range(20)]
    body = gzip.compress(json.dumps(batch).encode())
    assert len(body) < 4096
    r = small_client.post("/v1/events", content=body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert_error(r, 413)
    assert stored_count(store) == 0


@pytest.mark.parametrize(
    ("body", "fragment"),
    [(b"definitely not gzip", "not valid gzip"), (gzip.compress(b"[]" * 100)[:20], "truncated"),
     (zlib.compress(b"[]"), "not valid gzip")],
)
def test_broken_gzip_is_400(client, store, body, fragment):
    r = client.post("/v1/events", content=body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert_error(r, 400, fragment)
    assert stored_count(store) == 0


def test_an_unsupported_content_encoding_is_400(client, store):
    r = client.post("/v1/events", content=b"[]", headers={"Content-Type": "application/json", "Content-Encoding": "br"})
    assert_error(r, 400, "'br' is not supported")


def test_an_unsupported_content_type_is_415(client, store):
    r = client.post("/v1/events", content=json.dumps([event()]), headers={"Content-Type": "text/plain"})
    assert_error(r, 415, "text/plain")
    assert stored_count(store) == 0


def test_an_empty_batch_is_a_harmless_no_op(client, store):
    assert post(client, []).json() == {"accepted": 0, "duplicates": 0, "rejected": []}
    assert stored_count(store) == 0


def test_the_openapi_document_describes_ingest(client):
    doc = client.get("/openapi.json").json()
    post_op = doc["paths"]["/v1/events"]["post"]
    assert {"200", "400", "401", "403", "413", "422"} <= set(post_op["responses"])
    assert "Event" in doc["components"]["schemas"]
    assert "user" in doc["components"]["schemas"]["Event"]["properties"]


def test_health_and_ready(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["status"] == "ready"

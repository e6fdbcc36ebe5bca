"""Values one store cannot hold never take anyone else down (issue 12, item 2).

Validation is one set of rules both stores can hold (no NUL in any text; the texts of an
index key within MAX_KEY_BYTES of UTF-8; tags within MAX_TAGS_BYTES), applied to events,
OTLP spans, measurements and server events alike; and when a group commit fails anyway, the
writer stores each request of the group on its own, so only the request at fault fails (422).
Everything here runs on SQLite and PostgreSQL; the HTTP tests against a real collector.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import time

import httpx
import pytest

from conftest import make_keys
from foundation_helpers import EVERYTHING, event, now_ms
from mcpmeter.events import MAX_KEY_BYTES, decode_batch, new_event
from mcpmeter.exceptions import Unstorable
from mcpmeter.measurements import MAX_TAGS_BYTES
from mcpmeter.server.collector.writer import Writer
from mcpmeter.storage import open_store
from mcpmeter.storage.base import EventFilter

NUL = "\x00"


def astral(n: int, seed: int) -> str:
    """``n`` different 4-byte characters (CJK extension B): nothing PostgreSQL's compression could shrink."""
    rng = random.Random(seed)
    return "".join(chr(rng.randrange(0x20000, 0x2A6DF)) for _ in range(n))


def otlp_export(tool: str) -> dict:
    start = int((time.time() - 5) * 1e9)
    attrs = {"mcp.method.name": "tools/call", "gen_ai.tool.name": tool}
    span = {"traceId": os.urandom(16).hex(), "spanId": os.urandom(8).hex(), "name": f"tools/call {tool}", "kind": 2,
            "startTimeUnixNano": str(start), "endTimeUnixNano": str(start + 10_000_000),
            "attributes": [{"key": k, "value": {"stringValue": v}} for k, v in attrs.items()]}
    return {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
                               "scopeSpans": [{"spans": [span]}]}]}


def hostile_requests() -> list[tuple[str, object]]:
    """(path, body) of requests whose every item passed the old validation and that PostgreSQL cannot store."""
    wide = {"server": astral(200, 1), "tool": astral(200, 2), "client_name": astral(200, 3),
            "error_type": astral(200, 4), "ok": False}  # error_hour's key row: 3,200 bytes > 2,704
    return [
        ("/v1/events", [event(tool=f"a{NUL}b")]),
        ("/v1/events", [event(error_type="E", ok=False, error_message=f"boom{NUL}")]),
        ("/v1/events", [event(attributes={"k": f"v{NUL}"}), event(session_id=f"s{NUL}")]),
        ("/v1/events", [event(**wide)]),
        ("/v1/measurements", {"server": "weblab", "metrics": [  # measurement_day's key row: ~13,000 bytes
            {"name": "m", "value": 1, "type": "counter", "tags": {f"t{i}": astral(200, 10 + i) for i in range(16)}}]}),
        ("/v1/measurements", {"server": "weblab", "metrics": [{"name": "m", "value": 1, "tags": {"k": f"v{NUL}"}}]}),
        ("/v1/measurements", {"server": f"web{NUL}lab", "metrics": [{"name": "m", "value": 1}]}),
        ("/v1/measurements", {"server": "weblab", "metrics": [{"name": "m", "value": 1, "id": f"i{NUL}"}]}),
        ("/v1/server-events", [{"server": "weblab", "type": "deploy", "message": f"v2{NUL}"}]),
        ("/v1/server-events", [{"server": astral(200, 5), "type": "deploy"}]),
        ("/v1/traces", otlp_export(f"to{NUL}ol")),
        ("/v1/traces", otlp_export(astral(190, 6))),
    ]


def post(client: httpx.Client, path: str, body: object, key: str) -> httpx.Response:
    return client.post(path, content=json.dumps(body).encode(),
                       headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})


def refused(response: httpx.Response) -> bool:
    """A 4xx, or a 2xx in which every item was rejected (OTLP: partial success)."""
    if 400 <= response.status_code < 500:
        return True
    if response.status_code != 200:
        return False
    if response.request.url.path == "/v1/traces":
        return response.headers["X-MCPMeter-Accepted"] == "0" and "rejected" in response.text
    body = response.json()
    return body["accepted"] == 0 and len(body["rejected"]) > 0


def held(store, project: str) -> tuple[int, int, int]:
    """(events, measurement days, server events) the store holds for ``project``."""
    p = store.project_by_name(project)
    f = EventFilter(p.id, *EVERYTHING)
    return store.count_events(f, kind=None), len(store.measurement_days(f)), len(store.server_events(f))


def test_hostile_values_from_one_project_leave_another_projects_ingest_alone(collector):
    """Project A sends every kind of unstorable value while B ingests: B gets 2xx and has
    every event; every request of A is refused with a 4xx (or a per-item rejection) and
    nothing of A is stored. (Before: A's values passed validation, and on PostgreSQL their
    group commit failed with 503 for every request in it; on SQLite the NULs were stored.)"""
    store = open_store(str(collector.db))
    a, b = make_keys(store, "a"), make_keys(store, "b")
    b_batches = [[event(tool=f"t{i % 5}") for _ in range(40)] for i in range(30)]
    answers: dict[str, list[tuple[str, httpx.Response]]] = {"a": [], "b": []}

    def send(who: str, requests: list[tuple[str, object]], key: str) -> None:
        with httpx.Client(base_url=collector.url, timeout=30) as client:
            for path, body in requests:
                answers[who].append((path, post(client, path, body, key)))

    hostile = hostile_requests()
    threads = [threading.Thread(target=send, args=("b", [("/v1/events", batch) for batch in b_batches[i::3]], b.ingest))
               for i in range(3)]
    threads += [threading.Thread(target=send, args=("a", hostile[i::2] * 2, a.ingest)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert len(answers["b"]) == len(b_batches)
        assert all(r.status_code == 200 for _, r in answers["b"]), [r.text for _, r in answers["b"] if r.status_code != 200]
        assert sum(r.json()["accepted"] for _, r in answers["b"]) == 40 * len(b_batches)
        assert held(store, "b")[0] == 40 * len(b_batches)
        assert len(answers["a"]) == 2 * len(hostile)
        wrong = [(path, r.status_code, r.text[:300]) for path, r in answers["a"] if not refused(r)]
        assert not wrong, wrong
        assert held(store, "a") == (0, 0, 0)  # nothing of A, not even half of a request
    finally:
        store.close()


def test_the_rules_refuse_per_event_with_a_reason_and_keep_the_rest():
    good = event()
    batch = [good, event(tool=f"a{NUL}b"), event(server=astral(151, 7)), event(server=astral(150, 8)),
             event(attributes={f"k{NUL}": 1}), event(error_message=f"x{NUL}")]
    events, rejected = decode_batch(json.dumps(batch).encode())
    assert [e.id for e in events] == [good["id"], batch[3]["id"]]  # 150 four-byte characters fit (600 bytes)
    reasons = {r.index: r.error for r in rejected}
    assert set(reasons) == {1, 2, 4, 5}
    assert "NUL" in reasons[1] and "$.tool" in reasons[1]
    assert f"at most {MAX_KEY_BYTES}" in reasons[2] and "$.server" in reasons[2]
    assert "$.attributes" in reasons[4] and "$.error_message" in reasons[5]


def test_a_sender_building_events_with_new_event_is_never_refused():
    """The SDK's constructor clips to the same rules: NUL becomes U+FFFD, key texts fit in bytes."""
    made = new_event("tool_call", now_ms(), astral(300, 9), tool=f"to{NUL}ol", error_type=astral(199, 10),
                     error_message=f"m{NUL}", client_name="é" * 200, session_id=f"s{NUL}",
                     attributes={f"k{NUL}": f"v{NUL}"})
    events, rejected = decode_batch(json.dumps([{k: v for k, v in _as_dict(made).items() if v is not None}]).encode())
    assert rejected == [] and len(events) == 1
    assert made.tool == "to\ufffdol" and len(made.server.encode()) <= MAX_KEY_BYTES
    assert len(made.client_name) == 200  # two-byte characters: 400 bytes, not clipped


def _as_dict(e) -> dict:
    import msgspec

    return msgspec.to_builtins(e)


def test_tags_are_limited_in_bytes():
    from mcpmeter.events import BatchError
    from mcpmeter.measurements import measurement_rows

    fits = {"server": "w", "metrics": [{"name": "m", "value": 1, "tags": {f"t{i}": "x" * 80 for i in range(16)}}]}
    assert len(measurement_rows(json.dumps(fits).encode())) == 1  # 16 x ~88 bytes
    over = {"server": "w", "metrics": [{"name": "m", "value": 1, "tags": {f"t{i}": "x" * 200 for i in range(16)}}]}
    with pytest.raises(BatchError, match=f"at most {MAX_TAGS_BYTES}"):
        measurement_rows(json.dumps(over).encode())


def test_a_group_commit_that_fails_is_retried_request_by_request(store):
    """Rows that no store can hold (a lone surrogate cannot be encoded) in the same group as
    other projects' rows: only their request fails, with Unstorable; the others are stored.
    (Before: every request of the group failed with the same exception.)"""
    pa, pb = store.ensure_project("a"), store.ensure_project("b")
    from mcpmeter.events import to_row

    def rows(n: int, **fields) -> list:
        return [to_row(new_event("tool_call", now_ms(), "weblab", tool="search", **fields), None) for _ in range(n)]

    bad = [*rows(3), *rows(1, error_type="E\ud800")]  # passes no validation: submitted straight to the writer
    writer = Writer(store)

    async def submit_together():
        futures = [writer.submit(pb.id, rows(5)), writer.submit(pa.id, bad), writer.submit(pb.id, rows(7))]
        writer.start()  # the three were queued before the writer ran: one group
        return await asyncio.gather(*futures, return_exceptions=True)

    try:
        first, middle, last = asyncio.run(submit_together())
    finally:
        writer.stop()
    assert first.accepted == 5 and last.accepted == 7
    assert isinstance(middle, Unstorable) and "nothing of it was stored" in middle.hint
    assert held(store, "b")[0] == 12 and held(store, "a")[0] == 0


@pytest.mark.parametrize(("text", "expected"), [
    ("plain", (False, False)),
    ("caf\u00e9", (False, True)),  # written as itself: not ASCII
    ('say "hi"', (False, False)),  # escapes, but no \u
    ("a\\u0000b", (False, False)),  # an escaped backslash then "u0000": no NUL
    ("a\x00b", (True, True)),
    ("\x1f", (False, True)),  # a \u escape (of an ASCII character: still checked)
    ('"' * 100 + "\x00", (True, True)),  # more escapes than are walked one by one
])
def test_the_body_scan_finds_every_nul_and_every_escape(text, expected):
    from mcpmeter.events import scan

    assert scan(json.dumps([text], ensure_ascii=False).encode()) == expected
    assert scan(json.dumps([text]).encode())[0] == expected[0]  # ASCII-only JSON: the same NULs

"""The permanent adversarial suite: hostile requests against a real collector on BOTH backends.

Every request goes, byte for byte, to a SQLite collector and a PostgreSQL collector (real
`mcpmeter serve` processes) while project B ingests on both in another thread. For each:

- no 5xx, ever (a 5xx is retried by senders, and says the collector broke);
- the same status code on both backends, and the same change to what project A holds;
- nothing stored from a refused request (events, measurements, server events, keys, grants,
  audit entries of project A counted through the store before and after);
- project B's concurrent ingest unaffected (every batch 200, every event stored).

Hypothesis generates hostile events, measurements, server events, query parameters and headers:
NUL, lone surrogates, 4-byte characters, huge fields, deep nesting, wrong types, odd
Content-Types and encodings. ``MCPMETER_ADVERSARIAL_EXAMPLES`` sets the examples per property
(default 60: well under a minute per backend). The fixed cases below are issue 12's items 14
and 15, one test each, and what the properties found.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest
from adversarial_helpers import ENCODINGS, Bystander, Pair, collector_pair, encode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foundation_helpers import now_ms
from mcpmeter.analytics.periods import iso

EXAMPLES = int(os.environ.get("MCPMETER_ADVERSARIAL_EXAMPLES", "60"))
DAY = 86_400_000


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    with collector_pair(tmp_path_factory.mktemp("adversarial")) as p:
        yield p


class Hostile(NamedTuple):
    method: str
    path: str
    key: str | None = "a.ingest"
    content: bytes | None = None
    headers: dict[str, str] | None = None
    params: Any = None


def same_answer_and_nothing_stored_if_refused(pair: Pair, request: Hostile) -> list[int]:
    """Send ``request`` to both backends and check the promises; returns the status codes."""
    before = [side.held("a") for side in pair.sides]
    answers = pair.send(request.method, request.path, key=request.key, content=request.content,
                        headers=request.headers, params=request.params)
    after = [side.held("a") for side in pair.sides]
    codes = [r.status_code for r in answers]
    detail = {"request": request[:3], "headers": request.headers, "params": request.params,
              "body": None if request.content is None else request.content[:200],
              **{side.backend: (r.status_code, r.text[:300]) for side, r in zip(pair.sides, answers)}}
    assert all(code < 500 for code in codes), detail
    assert len(set(codes)) == 1, detail
    if codes[0] >= 400:
        assert after == before, (detail, before, after)
    deltas = [tuple(x - y for x, y in zip(a, b)) for a, b in zip(after, before)]
    assert len(set(deltas)) == 1, (detail, deltas)
    return codes


def explore(pair: Pair, requests: st.SearchStrategy[Hostile]) -> None:
    """Run the checks on ``EXAMPLES`` generated requests while project B ingests on both backends."""

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(requests)
    def one(request: Hostile) -> None:
        same_answer_and_nothing_stored_if_refused(pair, request)  # stored or refused, alike on both: no 503 on one

    with Bystander(pair) as bystander:
        one()
    bystander.check()


# ---- hostile values -------------------------------------------------------------------------------

texts = (st.text(max_size=24)
         | st.sampled_from(["", " ", "😀" * 64, "😀" * 150, "x" * 201, "é" * 129, "\u202egnp.exe", "a/b\\c", "%00", "tool_call"])
         | st.text(min_size=2000, max_size=2100))
surrogates = st.sampled_from(["\ud800", "a\udfffb", "\udbff\udc00\ud800"])  # lone surrogates: not text
scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | texts
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3), max_leaves=8)


@st.composite
def timestamps(draw) -> Any:
    """A time relative to now (from 200 days ago to 3 days ahead) in any of the forms a sender might use, or junk."""
    ms = now_ms() + draw(st.integers(-200 * DAY, 3 * DAY))
    form = draw(st.sampled_from(["ms", "ms", "float", "text", "iso", "junk"]))
    if form == "float":
        return ms + draw(st.sampled_from([0.0, 0.5]))
    if form == "text":
        return str(ms)
    if form == "iso":
        return iso(ms)
    return ms if form == "ms" else draw(values)


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


class Raw(NamedTuple):
    """JSON text placed into a document as is (deep nesting, lone surrogate escapes, NaN).

    Not a ``str`` subclass: hypothesis takes a str subclass for one of its own choices."""

    text: str


def dump(value: Any, ascii_only: bool) -> bytes:
    """``value`` as JSON, ``Raw`` pieces spliced in; lone surrogates kept (escaped, or as invalid UTF-8)."""
    return _text(value, ascii_only).encode("utf-8", "surrogatepass")


def _text(v: Any, ascii_only: bool) -> str:
    if isinstance(v, Raw):
        return v.text
    if isinstance(v, dict):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=ascii_only)}:{_text(x, ascii_only)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_text(x, ascii_only) for x in v) + "]"
    return json.dumps(v, ensure_ascii=ascii_only)


oddities = (st.builds(lambda d: Raw(nested(d)), st.sampled_from([3, 40, 600, 1500, 20_000]))
            | st.builds(Raw, st.sampled_from(["NaN", "Infinity", "-0", "1e999", "1" * 400, '"\\ud800"', '"\\u0000"']))
            | surrogates)
hostile_values = values | oddities

EVENT_FIELDS = ("id", "kind", "ts", "server", "server_version", "tool", "category", "duration_ms", "ok", "error_type",
                "error_message", "session_id", "client_name", "client_version", "protocol_version", "transport", "user",
                "args_bytes", "result_bytes", "attributes", "unknown")


@st.composite
def events(draw) -> Any:
    """Mostly almost valid events with a few fields made hostile; sometimes anything at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(hostile_values)
    event: dict[str, Any] = {"id": draw(st.uuids()).hex, "kind": "tool_call", "ts": now_ms() - draw(st.integers(0, DAY)),
                             "server": "hostile", "tool": draw(st.sampled_from(["search", "fetch"]))}
    for name in draw(st.sets(st.sampled_from(EVENT_FIELDS), max_size=4)):
        if name == "ts":
            event[name] = draw(timestamps())
        elif name == "attributes":
            event[name] = draw(st.dictionaries(texts, scalars | oddities, max_size=40) | hostile_values)
        else:
            event[name] = draw(texts | hostile_values)
    return event


@st.composite
def bodies(draw, documents: st.SearchStrategy[Any]) -> tuple[bytes, dict[str, str]]:
    """A document, written as JSON (or not), sent with some Content-Encoding."""
    shape = draw(st.sampled_from(["json", "json", "json", "json", "garbage", "empty", "deep"]))
    if shape == "garbage":
        raw = draw(st.binary(max_size=200))
    elif shape == "empty":
        raw = b""
    elif shape == "deep":
        raw = nested(draw(st.sampled_from([900, 1200, 50_000]))).encode()
    else:
        raw = dump(draw(documents), draw(st.booleans()))
    body, headers = encode(raw, draw(st.sampled_from(ENCODINGS)))
    content_type = draw(st.sampled_from(["application/json", "application/json", "application/json; charset=utf-8",
                                         "text/plain", "application/x-www-form-urlencoded", "", "application/JSON",
                                         "multipart/form-data; boundary=x", "application/x-protobuf"]))
    if content_type:
        headers["Content-Type"] = content_type
    return body, headers


batches = st.lists(events(), max_size=5) | st.builds(lambda e: {"events": e}, st.lists(events(), max_size=3)) | hostile_values


@st.composite
def measurements(draw) -> Any:
    metric = {"name": draw(st.sampled_from(["requests", "cache.hits", "q:len"]) | texts | hostile_values),
              "value": draw(st.floats(allow_nan=False) | hostile_values), "type": draw(st.sampled_from(["counter", "gauge", "timer"]) | texts),
              "tags": draw(st.dictionaries(texts, texts, max_size=20) | hostile_values),
              "timestamp": draw(timestamps()), "id": draw(st.none() | texts)}
    for name in draw(st.sets(st.sampled_from(sorted(metric)), max_size=3)):
        del metric[name]
    return {"server": draw(st.sampled_from(["hostile"]) | texts), "metrics": draw(st.lists(st.just(metric) | hostile_values, max_size=3))}


@st.composite
def server_events(draw) -> Any:
    event = {"server": draw(st.sampled_from(["hostile"]) | texts | hostile_values),
             "type": draw(st.sampled_from(["deploy", "restart"]) | texts | hostile_values),
             "ts": draw(timestamps()), "version": draw(texts | hostile_values), "message": draw(texts | hostile_values),
             "attributes": draw(st.dictionaries(texts, scalars, max_size=40) | hostile_values)}
    for name in draw(st.sets(st.sampled_from(sorted(event)), max_size=3)):
        del event[name]
    return draw(st.lists(st.just(event), max_size=3) | st.just({"events": [event]}) | hostile_values)


otlp_spans = st.builds(lambda attrs, name: {"resourceSpans": [{"scopeSpans": [{"spans": [{
    "traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "name": name, "kind": 2,
    "startTimeUnixNano": str(now_ms() * 1_000_000), "endTimeUnixNano": str(now_ms() * 1_000_000 + 5),
    "attributes": attrs}]}]}]},
    st.lists(st.fixed_dictionaries({"key": st.sampled_from(["mcp.method.name", "gen_ai.tool.name", "user.id"]) | texts,
                                    "value": st.fixed_dictionaries({"stringValue": texts}) | hostile_values}), max_size=4),
    texts) | hostile_values


def ingest_requests(path: str, documents: st.SearchStrategy[Any]) -> st.SearchStrategy[Hostile]:
    return st.builds(lambda b: Hostile("POST", path, content=b[0], headers=b[1]), bodies(documents))


# ---- the properties ---------------------------------------------------------------------------------


def test_hostile_event_batches(pair: Pair) -> None:
    explore(pair, ingest_requests("/v1/events", batches))


def test_hostile_measurements_and_server_events(pair: Pair) -> None:
    explore(pair, ingest_requests("/v1/measurements", measurements()) | ingest_requests("/v1/server-events", server_events()))


def test_hostile_otlp_json(pair: Pair) -> None:
    explore(pair, ingest_requests("/v1/traces", otlp_spans))


USAGE = ["summary", "tools", "timeseries", "errors", "clients", "users", "sessions", "measurements", "server-events"]
param_values = (st.text(max_size=30) | st.sampled_from(["7d", "0d", "99999d", "1" * 5000, "١٢٣", "²", "10000-01-01",
                                                        "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
                                                        "2026-01-01T00:00:00+25:00", "-1", "1e3", "a\x00b", "\ud800",
                                                        "😀" * 300, "x" * 9000])
                | st.builds(lambda n: str(now_ms() - n), st.integers(-400 * DAY, 400 * DAY)))
usage_params = st.dictionaries(st.sampled_from(["period", "from", "to", "grain", "server", "tool", "client", "name", "bogus", "\x00"]),
                               param_values, max_size=4)


def test_hostile_query_parameters(pair: Pair) -> None:
    requests = st.builds(lambda q, p, key: Hostile("GET", f"/v1/usage/{q}", key=key, params=p),
                         st.sampled_from(USAGE), usage_params, st.sampled_from(["a.read", "a.read", "a.admin", "a.ingest", "b.read"]))
    explore(pair, requests)


header_values = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=60) | st.sampled_from(
    ["Bearer", "Bearer mcpm_" + "x" * 5000, "bearer\tx", "Basic Zm9vOmJhcg==", "Bearer mcpm_\u00e9"])


@st.composite
def header_requests(draw) -> Hostile:
    headers = draw(st.dictionaries(st.sampled_from(["Authorization", "Content-Type", "Content-Encoding", "Content-Length",
                                                    "X-MCPMeter-Signature", "X-MCPMeter-Timestamp", "X-MCPMeter-CSRF", "Host",
                                                    "Origin", "X-Forwarded-For", "Transfer-Encoding"]), header_values, max_size=3))
    if "Content-Length" in headers or "Transfer-Encoding" in headers or "Host" in headers:
        headers.pop("Content-Length", None)  # framing lies break the connection, not the collector: not this test
        headers.pop("Transfer-Encoding", None)
        headers.pop("Host", None)
    method, path = draw(st.sampled_from([("POST", "/v1/events"), ("POST", "/v1/measurements"), ("GET", "/v1/usage/summary"),
                                         ("POST", "/v1/session"), ("POST", "/v1/admin/keys"), ("POST", "/v1/admin/access"),
                                         ("GET", "/v1/admin/keys"), ("DELETE", "/v1/admin/users")]))
    key = draw(st.sampled_from([None, "a.ingest", "a.read", "a.admin", "b.read"]))  # b.read: cannot store (the bystander counts B)
    if "Authorization" in headers:
        key = None
    body = dump(draw(batches if path == "/v1/events" else hostile_values), True) if method == "POST" else None
    params = {"user": draw(texts)} if path == "/v1/admin/users" else None
    return Hostile(method, path, key=key, content=body, headers=headers, params=params)


def test_hostile_headers(pair: Pair) -> None:
    explore(pair, header_requests())


@st.composite
def admin_requests(draw) -> Hostile:
    path, fields = draw(st.sampled_from([("/v1/admin/keys", ("name", "scopes", "expires_days")), ("/v1/admin/access", ("identity", "role")),
                                         ("/v1/admin/keys/nope/rotate", ("overlap",)), ("/v1/session", ("key",))]))
    doc = {name: draw(texts | hostile_values | st.lists(st.sampled_from(["read", "ingest", "admin"]) | texts, max_size=3))
           for name in draw(st.sets(st.sampled_from(fields)))}
    body, headers = draw(bodies(st.just(doc) | hostile_values))
    headers["X-MCPMeter-CSRF"] = "1"
    return Hostile("POST", path, key="a.admin", content=body, headers=headers)


def test_hostile_admin_and_sign_in_bodies(pair: Pair) -> None:
    explore(pair, admin_requests())


# ---- issue 12 item 14: every bad input gets a clear 4xx ------------------------------------------------

JSON_ENDPOINTS = [("/v1/events", "a.ingest"), ("/v1/traces", "a.ingest"), ("/v1/measurements", "a.ingest"),
                  ("/v1/server-events", "a.ingest"), ("/v1/session", None), ("/v1/admin/keys", "a.admin"),
                  ("/v1/admin/access", "a.admin"), ("/v1/admin/keys/a-ingest/rotate", "a.admin"), ("/metrics", "a.ingest")]


@pytest.mark.parametrize("path, key", JSON_ENDPOINTS)
@pytest.mark.parametrize("document", [nested(1_000), '{"a":' * 1_200 + "1" + "}" * 1_200, "[" * 50_000])
def test_json_nested_a_thousand_levels_is_400(pair: Pair, path: str, key: str | None, document: str) -> None:
    request = Hostile("POST", path, key=key, content=document.encode(),
                      headers={"Content-Type": "application/json", "X-MCPMeter-CSRF": "1"})
    assert same_answer_and_nothing_stored_if_refused(pair, request) == [400, 400]
    answer = pair.send("POST", path, key=key, content=document.encode(),
                       headers={"Content-Type": "application/json", "X-MCPMeter-CSRF": "1"})[0].json()
    assert "nested too deeply" in str(answer.get("error") or answer.get("detail"))  # POST /metrics answers the gateway's shape


def test_json_nested_within_reason_is_still_read(pair: Pair) -> None:
    """The bound refuses what decoders cannot follow, not documents that are merely nested."""
    event = {"id": "nested-ok", "kind": "tool_call", "ts": now_ms(), "server": "hostile", "tool": "t"}
    body = json.dumps({"events": [event]}).encode()
    assert same_answer_and_nothing_stored_if_refused(pair, Hostile("POST", "/v1/events", content=body)) == [200, 200]


BAD_TIMES = [("from", "1" * 5000), ("from", "١٢٣"), ("from", "²"), ("from", "10000-01-01"), ("from", "0000-12-31"),
             ("from", "0001-01-01T00:00:00+01:00"), ("to", "9999-12-31T23:59:59-01:00"), ("to", "9" * 15),
             ("to", "0001-01-02T00:00:00Z")]


@pytest.mark.parametrize("name, value", BAD_TIMES)
@pytest.mark.parametrize("question", ["summary", "timeseries", "report"])
def test_times_outside_years_1_to_9999_are_400_with_a_hint(pair: Pair, question: str, name: str, value: str) -> None:
    request = Hostile("GET", f"/v1/usage/{question}", key="a.read", params={name: value})
    assert same_answer_and_nothing_stored_if_refused(pair, request) == [400, 400]
    answer = pair.send("GET", f"/v1/usage/{question}", key="a.read", params={name: value})[0].json()
    assert answer["hint"] and len(answer["error"]) < 200


@pytest.mark.parametrize("path, params", [("/v1/usage/summary", {"server": "a\x00b"}), ("/v1/usage/tools", {"tool": "\x00"}),
                                          ("/v1/usage/clients", {"client": "c\x00"}), ("/v1/usage/measurements", {"name": "m\x00"}),
                                          ("/v1/usage/summary", {"period": "7d\x00"}), ("/tools/a%00b", None)])
def test_a_nul_in_a_query_parameter_is_400(pair: Pair, path: str, params: dict | None) -> None:
    request = Hostile("GET", path, key="a.read", params=params)
    assert same_answer_and_nothing_stored_if_refused(pair, request) == [400, 400]


def test_a_nul_in_an_admin_body_or_parameter_is_400(pair: Pair) -> None:
    for request in (Hostile("POST", "/v1/admin/keys", key="a.admin", content=b'{"name": "k\\u0000", "scopes": ["read"]}',
                            headers={"Content-Type": "application/json"}),
                    Hostile("POST", "/v1/admin/access", key="a.admin", content=b'{"identity": "x\\u0000@example.com", "role": "viewer"}',
                            headers={"Content-Type": "application/json"}),
                    Hostile("DELETE", "/v1/admin/users", key="a.admin", params={"user": "u\x00"})):
        assert same_answer_and_nothing_stored_if_refused(pair, request) == [400, 400], request


@pytest.mark.parametrize("path, body", [("/v1/measurements", b'{"server": "s", "metrics": ["\xed\xa0\x80"]}'),
                                        ("/v1/measurements", b'{"server": "s", "metrics": [1, }'),
                                        ("/v1/server-events", b'["x", "\xff"]'), ("/v1/measurements", b"null")])
def test_a_type_error_before_a_syntax_error_is_4xx(pair: Pair, path: str, body: bytes) -> None:
    """Found by the properties: the typed decoder stops at the first wrong type, and the untyped
    retry then met the invalid UTF-8 (or syntax) further on — a 500."""
    codes = same_answer_and_nothing_stored_if_refused(pair, Hostile("POST", path, content=body, headers={"Content-Type": "application/json"}))
    assert codes[0] in (400, 422)


# ---- issue 12 item 15: a gzip body is exactly one member ------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/events", "/v1/measurements", "/v1/server-events", "/v1/traces"])
@pytest.mark.parametrize("how", ["gzip+member", "gzip+trailing"])
def test_gzip_with_a_second_member_or_trailing_bytes_is_refused(pair: Pair, path: str, how: str) -> None:
    documents = {"/v1/events": [{"id": uuid.uuid4().hex, "kind": "tool_call", "ts": now_ms(), "server": "gz", "tool": "t"}],
                 "/v1/measurements": {"server": "gz", "metrics": [{"name": "m", "value": 1, "type": "counter", "id": uuid.uuid4().hex}]},
                 "/v1/server-events": [{"server": "gz", "type": "deploy", "id": uuid.uuid4().hex}],
                 "/v1/traces": {"resourceSpans": []}}
    body, headers = encode(json.dumps(documents[path]).encode(), how)
    request = Hostile("POST", path, content=body, headers={**headers, "Content-Type": "application/json"})
    assert same_answer_and_nothing_stored_if_refused(pair, request) == [400, 400]
    answer = pair.send("POST", path, content=body, headers={**headers, "Content-Type": "application/json"})[0].json()
    assert "one gzip member" in answer["error"]
    plain, headers = encode(json.dumps(documents[path]).encode(), "gzip")  # the same document as one member is fine
    assert pair.send("POST", path, content=plain, headers={**headers, "Content-Type": "application/json"})[0].status_code == 200


# ---- found by this suite; fixed by the storable-values change (issue 12 item 2) -------------------------


@pytest.mark.parametrize("event", [
    pytest.param({"server": "nul\x00server"}, id="nul-in-server"),
    pytest.param({"tool": "nul\x00tool"}, id="nul-in-tool"),
    pytest.param({"error_message": "boom\x00", "ok": False, "error_type": "E"}, id="nul-in-message"),
    pytest.param({"session_id": "s\x00"}, id="nul-in-session"),
])
def test_values_that_pass_validation_are_storable_on_both_backends(pair: Pair, event: dict) -> None:
    document = [{"id": uuid.uuid4().hex, "kind": "tool_call", "ts": now_ms(), "server": "hostile",
                 "tool": "t", **event}]
    request = Hostile("POST", "/v1/events", content=json.dumps(document).encode(), headers={"Content-Type": "application/json"})
    same_answer_and_nothing_stored_if_refused(pair, request)  # stored or refused, alike on both: no 503 on one


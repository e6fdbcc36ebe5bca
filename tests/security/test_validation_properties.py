"""Property tests of event validation: ``decode_batch`` raises nothing but BatchError on any
input, accounts for every event of a batch, and never accepts an invalid event (checked
against an independent statement of the wire format's rules)."""

from __future__ import annotations

import json
import re
from datetime import datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcpmeter.events import MAX_ATTRIBUTE_VALUE, MAX_ATTRIBUTES, MAX_ERROR_MESSAGE, BatchError, Limits, decode_batch

NOW = 1_800_000_000_000
LIMITS = Limits(max_events=50, max_age_ms=10 * 86_400_000, max_skew_ms=3_600_000)
FIELDS = {"id", "kind", "ts", "server", "server_version", "tool", "category", "duration_ms", "ok", "error_type",
          "error_message", "session_id", "client_name", "client_version", "protocol_version", "transport", "user",
          "args_bytes", "result_bytes", "attributes"}
SHORT = {"server_version": 200, "category": 200, "error_type": 200, "session_id": 200, "client_name": 200,
         "client_version": 200, "protocol_version": 64, "transport": 32, "user": 512}

texts = st.text(max_size=40) | st.sampled_from(["", "x" * 201, "tool_call", "weblab", "a" * 129, "ok-id_1.2:3"])
scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | texts
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3), max_leaves=6)
timestamps = (st.integers(NOW - 12 * 86_400_000, NOW + 2 * 3_600_000) | st.integers(-5, 2**64)
              | st.sampled_from(["2027-01-15T08:00:00Z", "2027-01-15T08:00:00", "yesterday", "2027-01-15T08:00:00+02:00"]))
attribute_maps = st.dictionaries(st.text(max_size=70), scalars | st.text(min_size=500, max_size=520), max_size=34)


@st.composite
def candidate(draw):
    """Mostly almost-valid events with a few fields broken, sometimes anything at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(values)
    event = {"id": draw(st.sampled_from(["e1", "e2", "e3"]) | texts), "kind": draw(st.sampled_from(["tool_call", "list_tools", "x.y/z"]) | texts),
             "ts": draw(timestamps), "server": draw(st.sampled_from(["weblab", "time"]) | texts)}
    for name in draw(st.sets(st.sampled_from([*sorted(FIELDS - set(event)), "unknown", "arguments"]), max_size=6)):
        if name == "attributes":
            event[name] = draw(attribute_maps | values)
        elif name in ("duration_ms",):
            event[name] = draw(st.floats(-1, 1e8, allow_nan=False) | values)
        elif name in ("args_bytes", "result_bytes"):
            event[name] = draw(st.integers(-1, 2**41) | values)
        elif name == "ok":
            event[name] = draw(st.booleans() | values)
        else:
            event[name] = draw(texts | values)
    return event


def valid(e: dict) -> bool:
    """The wire format's rules, stated independently of the implementation."""
    if not isinstance(e, dict) or set(e) - FIELDS:
        return False
    attributes = e.get("attributes")
    texts = [v for v in e.values() if isinstance(v, str)]
    if isinstance(attributes, dict):
        texts += [*attributes, *(v for v in attributes.values() if isinstance(v, str))]
    if any("\x00" in text for text in texts):  # both stores must hold every text: no NUL
        return False
    for name in ("server", "tool", "client_name", "error_type", "session_id"):  # index keys: 600 bytes of UTF-8
        value = e.get(name)
        if isinstance(value, str) and len(value.encode("utf-8", "surrogatepass")) > 600:
            return False
    if not (isinstance(e.get("id"), str) and re.fullmatch(r"[A-Za-z0-9._:\-]{1,128}", e["id"])):
        return False
    if not (isinstance(e.get("kind"), str) and re.fullmatch(r"[a-z][a-z0-9_./]{0,63}", e["kind"])):
        return False
    if not (isinstance(e.get("server"), str) and 1 <= len(e["server"]) <= 200):
        return False
    ts = e.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, (int, str)):
        return False
    if isinstance(ts, str):
        try:
            moment = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        except ValueError:
            return False
        if moment.tzinfo is None:
            return False
        ts = int(moment.timestamp() * 1000)
    if not NOW - LIMITS.max_age_ms <= ts <= NOW + LIMITS.max_skew_ms:
        return False
    tool = e.get("tool")
    if tool is not None and not (isinstance(tool, str) and 1 <= len(tool) <= 200):
        return False
    if e["kind"] == "tool_call" and tool is None:
        return False
    for name, most in SHORT.items():
        value = e.get(name)
        if value is not None and not (isinstance(value, str) and len(value) <= most):
            return False
    if e.get("error_message") is not None and not isinstance(e["error_message"], str):
        return False
    d = e.get("duration_ms")
    if d is not None and (isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d <= 86_400_000):
        return False
    if e.get("ok") is not None and not isinstance(e["ok"], bool):
        return False
    for name in ("args_bytes", "result_bytes"):
        v = e.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) or not 0 <= v <= 1 << 40):
            return False
    attrs = e.get("attributes")
    if attrs is not None:
        if not isinstance(attrs, dict) or len(attrs) > MAX_ATTRIBUTES:
            return False
        for k, v in attrs.items():
            if not 1 <= len(k) <= 64:
                return False
            if not (v is None or isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(v) <= MAX_ATTRIBUTE_VALUE)):
                return False
            if isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**64:
                return False
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_any_bytes_give_events_or_a_batch_error(body):
    try:
        _events, rejected = decode_batch(body, LIMITS, now_ms=NOW)
    except BatchError:
        return
    assert all(r.index >= 0 for r in rejected)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.lists(candidate(), max_size=8), st.booleans())
def test_only_valid_events_are_accepted_and_every_event_is_accounted_for(batch, wrapped):
    body = json.dumps({"events": batch} if wrapped else batch).encode()
    counts: dict[str, int] = {}
    try:
        events, rejected = decode_batch(body, LIMITS, now_ms=NOW, counts=counts)
    except BatchError:
        raise AssertionError("a JSON list of at most 50 items is never refused as a whole") from None
    assert len(events) + len(rejected) + counts["repeated"] == len(batch)
    assert len({r.index for r in rejected}) == len(rejected)
    rejected_at = {r.index for r in rejected}
    for index, raw in enumerate(batch):
        if index in rejected_at:
            assert not valid(raw), f"a valid event was rejected: {raw!r} ({[r.error for r in rejected if r.index == index]})"
    accepted_ids = [e.id for e in events]
    assert len(set(accepted_ids)) == len(accepted_ids)
    for e in events:
        raw = next(r for i, r in enumerate(batch) if i not in rejected_at and isinstance(r, dict) and r.get("id") == e.id)
        assert valid(raw), f"an invalid event was accepted: {raw!r}"
        assert e.error_message is None or len(e.error_message) <= MAX_ERROR_MESSAGE
        assert isinstance(e.ts, int)


@given(st.integers(51, 80))
@settings(max_examples=5, deadline=None)
def test_too_many_events_is_a_batch_error_naming_the_limit(n):
    body = json.dumps([{"id": f"e{i}", "kind": "x", "ts": NOW, "server": "s"} for i in range(n)]).encode()
    try:
        decode_batch(body, LIMITS, now_ms=NOW)
    except BatchError as exc:
        assert "the limit is 50" in str(exc)
    else:
        raise AssertionError("accepted more events than the limit")

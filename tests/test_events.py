"""Wire format v1: what a batch may look like, why an event is rejected, and how senders
build events that are never rejected for a value's size."""

from __future__ import annotations

import json
from datetime import UTC

import msgspec
import pytest

from foundation_helpers import event, now_ms
from mcpmeter import events as wire
from mcpmeter.events import MAX_ERROR_MESSAGE, ROW_FIELDS, BatchError, Limits, decode_batch, new_event, to_row


def decode(events, limits: Limits = Limits(), now: int | None = None):
    return decode_batch(json.dumps(events).encode(), limits, now)


def test_a_json_array_and_an_events_object_are_both_batches():
    batch = [event(), event()]
    as_array, rejected_a = decode(batch)
    as_object, rejected_b = decode({"events": batch})
    assert not rejected_a and not rejected_b
    assert [e.id for e in as_array] == [e.id for e in as_object] == [e["id"] for e in batch]


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b"42", b'"events"', b"null", b'{"events": 5}'])
def test_a_body_that_is_not_a_batch_is_refused_as_a_whole(body):
    with pytest.raises(BatchError, match="JSON array of events"):
        decode_batch(body)


def test_an_object_body_needs_exactly_the_events_key():
    with pytest.raises(BatchError, match='exactly one key, "events"'):
        decode({"events": [event()], "extra": []})
    with pytest.raises(BatchError, match='exactly one key, "events"'):
        decode({"items": [event()]})


def test_too_many_events_refuse_the_batch():
    with pytest.raises(BatchError, match="3 events in one batch; the limit is 2"):
        decode([event(), event(), event()], Limits(max_events=2))
    assert len(decode([event(), event()], Limits(max_events=2))[0]) == 2


def test_rfc3339_and_epoch_millisecond_timestamps_mean_the_same_instant():
    ms = now_ms() // 1000 * 1000
    from datetime import datetime

    text = datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")
    offset = datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone().isoformat()
    events, rejected = decode([event(ts=ms), event(ts=text), event(ts=offset)])
    assert not rejected
    assert [e.ts for e in events] == [ms, ms, ms]


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"server": 5}, "$.server"),
        ({"ok": "yes"}, "$.ok"),
        ({"duration_ms": "fast"}, "$.duration_ms"),
        ({"duration_ms": -1}, "$.duration_ms"),
        ({"ts": 1.5}, "$.ts"),
        ({"ts": "2026-01-01T00:00:00"}, "$.ts"),  # no time zone
        ({"ts": "yesterday"}, "$.ts"),
        ({"id": "has spaces"}, "$.id"),
        ({"id": ""}, "$.id"),
        ({"kind": "Tool Call"}, "$.kind"),
        ({"tool": "x" * 201}, "$.tool"),
        ({"server": ""}, "$.server"),
        ({"user": "u" * 513}, "$.user"),
        ({"args_bytes": -3}, "$.args_bytes"),
        ({"attributes": {str(i): i for i in range(33)}}, "$.attributes"),
        ({"attributes": {"k": "v" * 513}}, "$.attributes"),
        ({"attributes": {"k": [1, 2]}}, "$.attributes"),
        ({"tool": None}, "$.tool"),  # a tool_call needs a tool
        ({"server": None}, "server"),  # required
    ],
)
def test_an_invalid_event_is_rejected_with_a_reason_naming_the_field(override, field):
    bad = event(**override)  # a None override removes the field
    events, rejected = decode([event(), bad, event()])
    assert len(events) == 2
    assert [(r.index, r.id) for r in rejected] == [(1, bad.get("id"))]
    assert field in rejected[0].error


def test_an_unknown_field_is_rejected_by_name():
    _, rejected = decode([event(colour="blue")])
    assert rejected[0].error == "unknown field `colour`"


def test_a_non_object_in_the_batch_is_rejected_without_an_id():
    events, rejected = decode([event(), 7, "x"])
    assert len(events) == 1
    assert [(r.index, r.id) for r in rejected] == [(1, None), (2, None)]


def test_the_time_window_is_enforced_with_the_configured_limits():
    now = 1_800_000_000_000
    day = 86_400_000
    limits = Limits(max_age_ms=10 * day, max_skew_ms=day)
    events, rejected = decode(
        [event(ts=now - 10 * day + 1), event(ts=now - 11 * day), event(ts=now + day), event(ts=now + 2 * day)],
        limits, now,
    )
    assert [e.ts for e in events] == [now - 10 * day + 1, now + day]
    assert [r.index for r in rejected] == [1, 3]
    assert "11 days old" in rejected[0].error and "older than 10 days" in rejected[0].error
    assert "future" in rejected[1].error


def test_a_long_error_message_is_truncated_not_rejected():
    events, rejected = decode([event(ok=False, error_type="Boom", error_message="e" * 5000)])
    assert not rejected
    assert len(events[0].error_message) == MAX_ERROR_MESSAGE
    assert events[0].error_message.endswith("…")


def test_ok_defaults_from_error_type_for_tool_calls_only():
    failed, succeeded, other = decode([
        event(ok=None, error_type="TimeoutError"), event(ok=None), event(kind="session_start", tool=None, ok=None),
    ])[0]
    assert (failed.ok, succeeded.ok, other.ok) == (False, True, None)


def test_other_kinds_need_no_tool():
    events, rejected = decode([event(kind="list_tools", tool=None), event(kind="sdk.dropped", tool=None)])
    assert not rejected and [e.kind for e in events] == ["list_tools", "sdk.dropped"]


def test_to_row_follows_row_fields_and_replaces_the_user_by_its_hash():
    (e,), _ = decode([event(user="alice@example.com", attributes={"region": "eu", "n": 2}, ok=False, error_type="X")])
    row = dict(zip(ROW_FIELDS, to_row(e, "hashed")))
    assert len(to_row(e, "hashed")) == len(ROW_FIELDS)
    assert row["user_hash"] == "hashed"
    assert "alice@example.com" not in map(str, row.values())
    assert row["ok"] == 0
    assert json.loads(row["attributes"]) == {"region": "eu", "n": 2}


# ---- new_event: every sender's constructor clips to the limits ------------------------------------


def accepted(event) -> bool:
    events, rejected = decode_batch(msgspec.json.encode([event]))
    return len(events) == 1 and not rejected


def test_new_event_clips_every_value_to_the_limits_the_decoder_enforces():
    huge = "x" * 100_000
    e = new_event(
        "tool_call", now_ms(), huge, tool=huge, server_version=huge, category=huge, error_type=huge,
        error_message=huge, session_id=huge, client_name=huge, client_version=huge, protocol_version=huge,
        transport=huge, user=huge, duration_ms=1e30, args_bytes=1 << 60, result_bytes=-5,
    )
    assert accepted(e)
    assert (len(e.server), len(e.tool), len(e.category), len(e.session_id)) == (wire.MAX_NAME, wire.MAX_NAME,
                                                                                 wire.MAX_SHORT_TEXT, wire.MAX_SHORT_TEXT)
    assert (len(e.protocol_version), len(e.transport), len(e.user)) == (wire.MAX_PROTOCOL_VERSION, wire.MAX_TRANSPORT,
                                                                       wire.MAX_USER)
    assert len(e.error_message) == MAX_ERROR_MESSAGE and e.error_message.endswith("…")
    assert (e.duration_ms, e.args_bytes, e.result_bytes) == (wire.MAX_DURATION_MS, wire.MAX_SIZE, 0)
    assert e.ok is False  # an error type and no verdict: the collector's rule, applied before sending


def test_new_event_leaves_values_within_the_limits_as_they_are():
    e = new_event("list_tools", 1_700_000_000_000, "weblab", tool="search", user="ann", duration_ms=1.5,
                  attributes={"tools": 3, "mcp.method.name": "tools/list"})
    assert (e.kind, e.ts, e.server, e.tool, e.user, e.duration_ms, e.ok) == (
        "list_tools", 1_700_000_000_000, "weblab", "search", "ann", 1.5, None)
    assert e.attributes == {"tools": 3, "mcp.method.name": "tools/list"}
    assert e.id.startswith(f"{1_700_000_000_000:012x}") and len(e.id) == 32


def test_new_event_turns_unusable_values_into_text_or_drops_them():
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    e = new_event("tool_call", now_ms(), "", tool="", user=42, attributes={
        **{f"k{i}": i for i in range(40)}, 7: [1, 2], "": "empty key", "obj": Unprintable(), "k" * 100: {"a": 1},
    })
    assert accepted(e)
    assert (e.server, e.tool, e.user) == ("(unnamed)", "(unnamed)", "42")
    assert len(e.attributes) == wire.MAX_ATTRIBUTES and e.attributes["k0"] == 0
    small = new_event("x", now_ms(), "s", attributes={7: [1, 2], "": "empty key", "obj": Unprintable(), "k" * 100: {"a": 1}})
    assert accepted(small)
    assert small.attributes == {"7": "[1,2]", "k" * (wire.MAX_ATTRIBUTE_KEY - 1) + "…": '{"a":1}'}


def test_new_event_ids_do_not_follow_the_hosts_random_seed():
    import random

    random.seed(1)
    first = new_event("x", 0, "s").id
    random.seed(1)
    assert new_event("x", 0, "s").id != first

"""Wire format v1: one event, its validation, and its storage row.

A batch is a JSON array of events or ``{"events": [...]}``. Each event is decoded on its
own so that one bad event is reported by index and reason without sinking the batch.
msgspec does the type, length and unknown-field checks in C; the few rules it cannot
express (time window, kind-specific requirements) follow in ``_check``.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any, Callable, NamedTuple

import msgspec
from msgspec import Meta

from .exceptions import BatchError  # noqa: F401  (raised here; its home is the exception tree)

MAX_ERROR_MESSAGE = 1024  # longer messages are truncated, not rejected
MAX_ATTRIBUTES = 32
MAX_ATTRIBUTE_VALUE = 512

Name = Annotated[str, Meta(min_length=1, max_length=200)]
ShortText = Annotated[str, Meta(max_length=200)]
EventId = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$")]
Kind = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_./]*$")]
Timestamp = Annotated[datetime, Meta(tz=True)] | Annotated[int, Meta(ge=0, le=253_402_300_799_999)]  # epoch ms up to year 9999
Size = Annotated[int, Meta(ge=0, le=1 << 40)]
AttrKey = Annotated[str, Meta(min_length=1, max_length=64)]
AttrValue = Annotated[str, Meta(max_length=MAX_ATTRIBUTE_VALUE)] | int | float | bool | None


class Event(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    id: EventId
    kind: Kind
    ts: Timestamp
    server: Name
    server_version: ShortText | None = None
    tool: Name | None = None
    category: ShortText | None = None
    duration_ms: Annotated[float, Meta(ge=0, le=86_400_000)] | None = None
    ok: bool | None = None
    error_type: ShortText | None = None
    error_message: str | None = None
    session_id: ShortText | None = None
    client_name: ShortText | None = None
    client_version: ShortText | None = None
    protocol_version: Annotated[str, Meta(max_length=64)] | None = None
    transport: Annotated[str, Meta(max_length=32)] | None = None
    user: Annotated[str, Meta(max_length=512)] | None = None
    args_bytes: Size | None = None
    result_bytes: Size | None = None
    attributes: Annotated[dict[AttrKey, AttrValue], Meta(max_length=MAX_ATTRIBUTES)] | None = None


class Row(NamedTuple):
    """A stored event, in column order. ``user`` is replaced by its keyed hash before storage."""

    event_id: str
    kind: str
    ts: int
    server: str
    server_version: str | None
    tool: str | None
    category: str | None
    duration_ms: float | None
    ok: int | None
    error_type: str | None
    error_message: str | None
    session_id: str | None
    client_name: str | None
    client_version: str | None
    protocol_version: str | None
    transport: str | None
    user_hash: str | None
    args_bytes: int | None
    result_bytes: int | None
    attributes: str | None  # JSON


# Columns of a stored event, in order.
ROW_FIELDS: tuple[str, ...] = Row._fields
_new_row = tuple.__new__  # a Row built as fast as a plain tuple (no per-field checks)


class Rejection(NamedTuple):
    index: int
    id: str | None
    error: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "id": self.id, "error": self.error}


class Limits(NamedTuple):
    max_events: int = 10_000
    max_age_ms: int = 180 * 86_400_000
    max_skew_ms: int = 86_400_000


_batch_decoder = msgspec.json.Decoder(list[msgspec.Raw] | dict[str, list[msgspec.Raw]])
# Fast path: a batch whose events all have valid types decodes in one C call. On any error
# the batch is decoded again event by event, which reports each bad event on its own.
_valid_batch_decoder = msgspec.json.Decoder(list[Event] | dict[str, list[Event]])
_event_decoder = msgspec.json.Decoder(Event)
_attr_encoder = msgspec.json.Encoder()


def decode_batch(body: bytes, limits: Limits = Limits(), now_ms: int | None = None,
                 counts: dict[str, int] | None = None,
                 admit: Callable[[Event], str | None] | None = None) -> tuple[list[Event], list[Rejection]]:
    """Split a request body into valid events and per-event rejections.

    An id repeated within the batch is kept once; ``counts["repeated"]`` (when a dict is
    given) says how many repeats were dropped, so answers can count them as duplicates.
    ``admit`` (the collector's per-project caps) may refuse a valid event with a reason.
    """
    try:
        decoded: list[Event] | dict[str, list[Event]] | None = _valid_batch_decoder.decode(body)
    except msgspec.DecodeError:  # also a ValidationError: take the slow path, which says what is wrong
        decoded = None
    try:
        parsed = _batch_decoder.decode(body) if decoded is None else decoded
    except msgspec.DecodeError as exc:
        raise BatchError(f"body is not a JSON array of events or {{\"events\": [...]}}: {exc}") from None
    if isinstance(parsed, dict):
        if set(parsed) != {"events"}:
            raise BatchError('an object body must have exactly one key, "events"')
        parsed = parsed["events"]
    if len(parsed) > limits.max_events:
        raise BatchError(f"{len(parsed)} events in one batch; the limit is {limits.max_events}")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    events: list[Event] = []
    rejected: list[Rejection] = []
    seen: set[str] = set()
    for index, raw in enumerate(parsed):
        try:
            event = _decode_event(raw) if decoded is None else raw
            _check(event, limits, now_ms)
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
            rejected.append(Rejection(index, _id_of(raw) if decoded is None else raw.id, _message(exc)))
            continue
        if event.id in seen:  # the same id twice in one batch: keep the first
            continue
        if admit is not None and (refused := admit(event)) is not None:
            rejected.append(Rejection(index, event.id, refused))
            continue
        seen.add(event.id)
        events.append(event)
    if counts is not None:
        counts["repeated"] = len(parsed) - len(events) - len(rejected)
    return events, rejected


_WHOLE_NUMBER_FIELDS = ("ts", "args_bytes", "result_bytes")


def _decode_event(raw: msgspec.Raw) -> Event:
    """One event; a whole number written as a float (``450.0``) is a whole number, as JSON Schema says."""
    try:
        return _event_decoder.decode(raw)
    except msgspec.ValidationError:
        value = msgspec.json.decode(raw)
        if not isinstance(value, dict) or not any(isinstance(value.get(f), float) for f in _WHOLE_NUMBER_FIELDS):
            raise
        for name in _WHOLE_NUMBER_FIELDS:
            number = value.get(name)
            if isinstance(number, float) and number.is_integer() and abs(number) < 2**63:
                value[name] = int(number)
        return _event_decoder.decode(msgspec.json.encode(value))


def _check(event: Event, limits: Limits, now_ms: int) -> None:
    ts = event.ts = ts_ms(event.ts)
    if ts < now_ms - limits.max_age_ms:
        raise ValueError(f"ts is {(now_ms - ts) // 86_400_000} days old; events older than {limits.max_age_ms // 86_400_000} days are not accepted - `$.ts`")
    if ts > now_ms + limits.max_skew_ms:
        raise ValueError("ts is in the future beyond the allowed clock skew; check the sender's clock - `$.ts`")
    if event.kind == "tool_call" and event.tool is None:
        raise ValueError("a tool_call event needs `tool` - `$.tool`")
    if event.error_message is not None and len(event.error_message) > MAX_ERROR_MESSAGE:
        event.error_message = event.error_message[: MAX_ERROR_MESSAGE - 1] + "…"
    if event.ok is None and event.kind == "tool_call":
        event.ok = event.error_type is None


def ts_ms(value: datetime | int) -> int:
    if isinstance(value, int):
        return value
    return int(value.timestamp() * 1000)


def to_row(event: Event, user_hash: str | None) -> Row:
    """The event as a storage row (``ts`` already in epoch ms)."""
    attrs = event.attributes
    return _new_row(Row, (
        event.id, event.kind, event.ts, event.server, event.server_version, event.tool,
        event.category, event.duration_ms, None if event.ok is None else int(event.ok),
        event.error_type, event.error_message, event.session_id, event.client_name,
        event.client_version, event.protocol_version, event.transport, user_hash,
        event.args_bytes, event.result_bytes,
        _attr_encoder.encode(attrs).decode() if attrs else None,
    ))


def _id_of(raw: msgspec.Raw) -> str | None:
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return value["id"][:128]
    return None


def _message(exc: Exception) -> str:
    text = str(exc)
    if "Object contains unknown field" in text:
        return text.replace("Object contains unknown field", "unknown field")
    return text

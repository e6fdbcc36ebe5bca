"""Wire format v1: one event, its limits, how a sender builds it, its validation, its storage row.

A batch is a JSON array of events or ``{"events": [...]}``. Each event is decoded on its
own so that one bad event is reported by index and reason without sinking the batch.
msgspec does the type, length and unknown-field checks in C; the few rules it cannot
express (time window, kind-specific requirements) follow in ``_check``.

What both stores can hold is part of the rules, so that an accepted event can always be
stored (a value one store cannot hold would fail the whole group commit it travels in):
no text may contain the NUL character (PostgreSQL text cannot), and the texts that are part
of an index key (``KEY_FIELDS``) are also limited in UTF-8 bytes (``MAX_KEY_BYTES``), so that
the widest rollup key stays under PostgreSQL's btree limit of 2704 bytes per index row. The
same rules (``text_problem``) apply to measurements, server events and OTLP spans.

Senders (the SDK's ``Meter``, its framework integrations, the proxy, the demo data) build
events with ``new_event``, which clips every value to the same limits (and replaces NUL with
U+FFFD), so that what they queue is always accepted.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, NamedTuple

import msgspec
from msgspec import Meta

from .exceptions import BatchError
from .protocol import CANCELLED, TOOL_CALL

# ---- the limits of the wire format ----------------------------------------------------------
# Declared once: the decoder's types below enforce them at the collector, and ``new_event``
# clips every value to them before an SDK queues the event.
MAX_ID = 128
MAX_KIND = 64
MAX_NAME = 200  # server, tool
MAX_SHORT_TEXT = 200  # server_version, category, error_type, session_id, client_name/version
MAX_PROTOCOL_VERSION = 64
MAX_TRANSPORT = 32
MAX_USER = 512
MAX_ERROR_MESSAGE = 1024  # longer messages are truncated, not rejected
MAX_ATTRIBUTES = 32
MAX_ATTRIBUTE_KEY = 64
MAX_ATTRIBUTE_VALUE = 512
MAX_DURATION_MS = 86_400_000
MAX_SIZE = 1 << 40  # args_bytes, result_bytes
MAX_TS_MS = 253_402_300_799_999  # epoch ms up to year 9999
# What both stores can hold. A text in an index key is at most MAX_KEY_BYTES of UTF-8 (so 200
# characters of any script but the 4-byte ones: 150 emoji): the widest key, error_hour's
# (server, tool, client, error_type), is then 4 x 600 + 40 bytes, under PostgreSQL's 2704.
MAX_KEY_BYTES = 600
KEY_FIELDS = ("server", "tool", "client_name", "error_type", "session_id")  # texts in an index key
NUL = "\x00"  # refused in every text: PostgreSQL text cannot hold it
REPLACEMENT = "\ufffd"  # what new_event puts in its place

Name = Annotated[str, Meta(min_length=1, max_length=MAX_NAME)]
ShortText = Annotated[str, Meta(max_length=MAX_SHORT_TEXT)]
EventId = Annotated[str, Meta(min_length=1, max_length=MAX_ID, pattern=r"^[A-Za-z0-9._:\-]+$")]
Kind = Annotated[str, Meta(min_length=1, max_length=MAX_KIND, pattern=r"^[a-z][a-z0-9_./]*$")]
Timestamp = Annotated[datetime, Meta(tz=True)] | Annotated[int, Meta(ge=0, le=MAX_TS_MS)]
Size = Annotated[int, Meta(ge=0, le=MAX_SIZE)]
AttrKey = Annotated[str, Meta(min_length=1, max_length=MAX_ATTRIBUTE_KEY)]
AttrValue = Annotated[str, Meta(max_length=MAX_ATTRIBUTE_VALUE)] | int | float | bool | None


class Event(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    id: EventId
    kind: Kind
    ts: Timestamp
    server: Name
    server_version: ShortText | None = None
    tool: Name | None = None
    category: ShortText | None = None
    duration_ms: Annotated[float, Meta(ge=0, le=MAX_DURATION_MS)] | None = None
    ok: bool | None = None
    error_type: ShortText | None = None
    error_message: str | None = None
    session_id: ShortText | None = None
    client_name: ShortText | None = None
    client_version: ShortText | None = None
    protocol_version: Annotated[str, Meta(max_length=MAX_PROTOCOL_VERSION)] | None = None
    transport: Annotated[str, Meta(max_length=MAX_TRANSPORT)] | None = None
    user: Annotated[str, Meta(max_length=MAX_USER)] | None = None
    args_bytes: Size | None = None
    result_bytes: Size | None = None
    attributes: Annotated[dict[AttrKey, AttrValue], Meta(max_length=MAX_ATTRIBUTES)] | None = None


# ---- building an event within the limits ---------------------------------------------------

_ids = random.Random()  # private, so a host seeding ``random`` cannot repeat our ids
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ids.seed)  # a forked child must not repeat its parent's ids
_attr_encoder = msgspec.json.Encoder()
UNNAMED = "(unnamed)"  # the name of a server or tool that has none
# The limits of new_event's optional text fields, in the order it checks them: characters,
# and UTF-8 bytes (only the fields of KEY_FIELDS have a byte limit below 4 bytes a character).
_TEXT_LIMITS = (MAX_SHORT_TEXT, MAX_SHORT_TEXT, MAX_SHORT_TEXT, MAX_ERROR_MESSAGE, MAX_SHORT_TEXT, MAX_SHORT_TEXT,
                MAX_SHORT_TEXT, MAX_PROTOCOL_VERSION, MAX_TRANSPORT, MAX_USER)
_BYTE_LIMITS = tuple(MAX_KEY_BYTES if field in KEY_FIELDS else 4 * chars for field, chars in zip(
    ("server_version", "category", "error_type", "error_message", "session_id", "client_name", "client_version",
     "protocol_version", "transport", "user"), _TEXT_LIMITS))
_SCALARS = (int, float, bool)


def event_id(ts_ms: int) -> str:
    """A new event id: time-ordered (millisecond prefix, so the store's id index stays
    append-mostly) followed by 80 random bits."""
    return f"{ts_ms:012x}{_ids.getrandbits(80):020x}"


def clip_text(value: Any, limit: int, max_bytes: int | None = None) -> str | None:
    """``value`` as text of at most ``limit`` characters (and ``max_bytes`` of UTF-8, if given)
    with NUL replaced by U+FFFD; a cut one ends with "…". None stays None."""
    if value is None:
        return None
    text = value if type(value) is str else str(value)
    if NUL in text:
        text = text.replace(NUL, REPLACEMENT)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    if max_bytes is not None and len(text) * 4 > max_bytes and len(encoded := text.encode()) > max_bytes:
        text = encoded[: max_bytes - 3].decode(errors="ignore") + "…"  # "…" is 3 bytes
    return text


def _fits(value: str, limit: int, max_bytes: int) -> bool:
    """Within ``limit`` characters and ``max_bytes`` of UTF-8, without NUL."""
    return len(value) <= limit and NUL not in value and (len(value) * 4 <= max_bytes or len(value.encode()) <= max_bytes)


def _name(value: Any) -> str:
    if type(value) is str and len(value) > 0 and _fits(value, MAX_NAME, MAX_KEY_BYTES):
        return value
    return clip_text(value, MAX_NAME, MAX_KEY_BYTES) or UNNAMED


def _size(value: Any) -> int | None:
    if value is None:
        return None
    if type(value) is not int:
        try:
            value = int(value)
        except (TypeError, ValueError, OverflowError):
            return None
    return value if 0 <= value <= MAX_SIZE else (0 if value < 0 else MAX_SIZE)


def _duration(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if 0.0 <= number <= MAX_DURATION_MS:
        return number
    return float(MAX_DURATION_MS) if number > MAX_DURATION_MS else 0.0  # (NaN is neither: 0)


def fit_attributes(attributes: Any) -> dict[str, Any] | None:
    """At most ``MAX_ATTRIBUTES`` entries with text keys and scalar or clipped-text values.

    A value of another type becomes its JSON text (or its ``str``), clipped; one that
    cannot be turned into text is dropped.
    """
    if type(attributes) is dict:
        if not attributes:
            return None
    elif not attributes or not isinstance(attributes, Mapping):
        return None
    if type(attributes) is dict and len(attributes) <= MAX_ATTRIBUTES:
        for key, value in attributes.items():  # the common case: all fits, nothing is copied
            if type(key) is not str or not 0 < len(key) <= MAX_ATTRIBUTE_KEY or NUL in key:
                break
            kind = type(value)
            if kind is str:
                if len(value) > MAX_ATTRIBUTE_VALUE or NUL in value:
                    break
            elif value is not None and kind is not int and kind is not float and kind is not bool:
                break
        else:
            return attributes
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        if len(out) == MAX_ATTRIBUTES:
            break
        try:
            key = clip_text(key, MAX_ATTRIBUTE_KEY)
            if not key or key in out:
                continue
            if value is None or isinstance(value, _SCALARS):
                out[key] = value
            elif isinstance(value, str):
                out[key] = clip_text(value, MAX_ATTRIBUTE_VALUE)
            else:
                try:
                    text = _attr_encoder.encode(value).decode()
                except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
                    text = str(value)
                out[key] = clip_text(text, MAX_ATTRIBUTE_VALUE)
        except Exception:  # a key or value whose str() fails: dropped
            continue
    return out or None


def new_event(
    kind: str, ts: int, server: str, *, id: str | None = None, server_version: str | None = None,
    tool: str | None = None, category: str | None = None, duration_ms: float | None = None,
    ok: bool | None = None, error_type: str | None = None, error_message: str | None = None,
    session_id: str | None = None, client_name: str | None = None, client_version: str | None = None,
    protocol_version: str | None = None, transport: str | None = None, user: str | None = None,
    args_bytes: int | None = None, result_bytes: int | None = None, attributes: Mapping[str, Any] | None = None,
) -> Event:
    """An event whose every value is within the wire format's limits (``ts`` in epoch ms).

    Text is clipped to its field's length (an error message as the collector truncates it),
    sizes and durations are clamped, attributes limited in number and length - so that one
    oversized value can never get an event, or the batch it travels in, refused.
    """
    # It runs inside instrumented requests: values are tested inline (no call per value) and
    # only when one does not fit are they clipped.
    if ts.__class__ is not int or not 0 <= ts <= MAX_TS_MS:
        ts = min(max(int(ts), 0), MAX_TS_MS)
    if kind.__class__ is not str or len(kind) > MAX_KIND:
        kind = clip_text(kind, MAX_KIND) or ""
    if server.__class__ is not str or not 0 < len(server) <= MAX_NAME // 4 or NUL in server:
        server = _name(server)  # (the common short name skips the byte count)
    if tool is not None and (tool.__class__ is not str or not 0 < len(tool) <= MAX_NAME // 4 or NUL in tool):
        tool = _name(tool)
    texts = (server_version, category, error_type, error_message, session_id, client_name, client_version,
             protocol_version, transport, user)
    for value, limit, max_bytes in zip(texts, _TEXT_LIMITS, _BYTE_LIMITS):
        if value is not None and (value.__class__ is not str or len(value) > limit or NUL in value
                                  or (len(value) * 4 > max_bytes and len(value.encode()) > max_bytes)):
            (server_version, category, error_type, error_message, session_id, client_name, client_version,
             protocol_version, transport, user) = (clip_text(v, n, b) for v, n, b in zip(texts, _TEXT_LIMITS, _BYTE_LIMITS))
            break
    if duration_ms is not None and (duration_ms.__class__ is not float or not 0.0 <= duration_ms <= MAX_DURATION_MS):
        duration_ms = _duration(duration_ms)
    if args_bytes is not None and (args_bytes.__class__ is not int or not 0 <= args_bytes <= MAX_SIZE):
        args_bytes = _size(args_bytes)
    if result_bytes is not None and (result_bytes.__class__ is not int or not 0 <= result_bytes <= MAX_SIZE):
        result_bytes = _size(result_bytes)
    if attributes is not None:
        attributes = fit_attributes(attributes)
    if ok is None:
        if kind == TOOL_CALL and error_type != CANCELLED:  # a cancelled call is neither ok nor failed
            ok = error_type is None
    elif ok.__class__ is not bool:
        ok = bool(ok)
    return Event(
        id=event_id(ts) if id is None else id, kind=kind, ts=ts, server=server, server_version=server_version,
        tool=tool, category=category, duration_ms=duration_ms, ok=ok, error_type=error_type,
        error_message=error_message, session_id=session_id, client_name=client_name,
        client_version=client_version, protocol_version=protocol_version, transport=transport, user=user,
        args_bytes=args_bytes, result_bytes=result_bytes, attributes=attributes,
    )


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


@dataclass(frozen=True, slots=True)
class Rejection:  # not a NamedTuple: its field ``index`` would hide tuple.index
    index: int
    id: str | None
    error: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "id": self.id, "error": self.error}


class Limits(NamedTuple):
    max_events: int = 10_000
    max_age_ms: int = 180 * 86_400_000
    max_skew_ms: int = 86_400_000
    age_setting: str = "MCPMETER_MAX_EVENT_AGE_DAYS"  # the setting that put max_age_ms where it is (named in refusals)


# ---- what both stores can hold ---------------------------------------------------------------

_TEXT_FIELDS = ("id", "server", "server_version", "tool", "category", "error_type", "error_message", "session_id",
                "client_name", "client_version", "protocol_version", "transport", "user")  # kind: its pattern has no NUL


_MAX_ESCAPES_WALKED = 64  # backslashes looked at one by one; beyond, one search of the whole body


def scan(body: bytes) -> tuple[bool, bool]:
    """Whether a JSON body may hold a NUL, and whether it may hold any non-ASCII text: the
    per-value checks of ``text_problem`` are needed only then. JSON writes NUL only as the
    escape ``\\u0000``, and other characters either as themselves or as ``\\u`` escapes; a body
    without a backslash (the common case: one memchr) has neither escape."""
    at = body.find(b"\\")
    if at < 0:
        return False, not body.isascii()
    nul = escaped = False
    for _ in range(_MAX_ESCAPES_WALKED):
        if body[at + 1:at + 2] == b"u":
            escaped = True
            if body[at + 2:at + 6] == b"0000":
                nul = True
                break
        at = body.find(b"\\", at + 2)  # past the escaped character (an escaped backslash too)
        if at < 0:
            return nul, escaped or not body.isascii()
    else:  # many escapes: search once
        nul = b"\\u0000" in body
    return nul, True


def text_problem(value: str, where: str, max_bytes: int | None = None) -> str | None:
    """Why a store could not hold ``value`` (None when it can): a NUL, or more than ``max_bytes``
    of UTF-8 where the value is part of an index key. ``where`` is its JSON path (``$.server``)."""
    if NUL in value:
        return f"text must not contain the NUL character (\\u0000) - `{where}`"
    if max_bytes is not None and len(value) * 4 > max_bytes:
        size = len(value.encode())
        if size > max_bytes:
            return f"text is {size} bytes in UTF-8; at most {max_bytes} are accepted here - `{where}`"
    return None


_NARROW = MAX_KEY_BYTES // 4  # a text of at most this many characters is within MAX_KEY_BYTES whatever they are


def _check_texts(event: Event, nul: bool) -> None:
    """What ``text_problem`` says of the event's texts (only run on a body ``scan`` flags)."""
    tool, client, error, session = event.tool, event.client_name, event.error_type, event.session_id
    if not nul and len(event.server) <= _NARROW and (tool is None or len(tool) <= _NARROW) and (
            client is None or len(client) <= _NARROW) and (error is None or len(error) <= _NARROW) and (
            session is None or len(session) <= _NARROW):
        return  # the common case: short key texts, no NUL anywhere
    if nul:
        for name in _TEXT_FIELDS:
            value = getattr(event, name)
            if value is not None and NUL in value:
                raise ValueError(text_problem(value, f"$.{name}"))
        for key, value in (event.attributes or {}).items():
            if NUL in key or (type(value) is str and NUL in value):
                raise ValueError(text_problem(NUL, f"$.attributes[{key[:40]!r}]"))
    for name in KEY_FIELDS:
        value = getattr(event, name)
        if value is not None and (problem := text_problem(value, f"$.{name}", MAX_KEY_BYTES)):
            raise ValueError(problem)


_batch_decoder = msgspec.json.Decoder(list[msgspec.Raw] | dict[str, list[msgspec.Raw]])
# Fast path: a batch whose events all have valid types decodes in one C call. On any error
# the batch is decoded again event by event, which reports each bad event on its own.
_valid_batch_decoder = msgspec.json.Decoder(list[Event] | dict[str, list[Event]])
_event_decoder = msgspec.json.Decoder(Event)


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
    parsed: Sequence[msgspec.Raw | Event] | Mapping[str, Sequence[msgspec.Raw | Event]]
    try:
        parsed = _batch_decoder.decode(body) if decoded is None else decoded
    except msgspec.DecodeError as exc:
        raise BatchError(f"body is not a JSON array of events or {{\"events\": [...]}}: {exc}") from None
    if isinstance(parsed, Mapping):
        if set(parsed) != {"events"}:
            raise BatchError('an object body must have exactly one key, "events"')
        parsed = parsed["events"]
    if len(parsed) > limits.max_events:
        raise BatchError(f"{len(parsed)} events in one batch; the limit is {limits.max_events}")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    nul, wide = scan(body)
    events: list[Event] = []
    rejected: list[Rejection] = []
    seen: set[str] = set()
    for index, raw in enumerate(parsed):
        try:
            event = raw if isinstance(raw, Event) else _decode_event(raw)
            _check(event, limits, now_ms)
            if wide:
                _check_texts(event, nul)
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
            rejected.append(Rejection(index, raw.id if isinstance(raw, Event) else _id_of(raw), _message(exc)))
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
        raise ValueError(f"ts is {(now_ms - ts) // 86_400_000} days old; events older than {limits.max_age_ms // 86_400_000} "
                         f"days are not accepted ({limits.age_setting}) - `$.ts`")
    if ts > now_ms + limits.max_skew_ms:
        raise ValueError("ts is in the future beyond the allowed clock skew; check the sender's clock - `$.ts`")
    if event.kind == TOOL_CALL and event.tool is None:
        raise ValueError("a tool_call event needs `tool` - `$.tool`")
    if event.error_message is not None and len(event.error_message) > MAX_ERROR_MESSAGE:
        event.error_message = clip_text(event.error_message, MAX_ERROR_MESSAGE)
    if event.ok is None and event.kind == TOOL_CALL and event.error_type != CANCELLED:
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
    ident = value.get("id") if isinstance(value, dict) else None
    return ident[:MAX_ID] if isinstance(ident, str) else None


def _message(exc: Exception) -> str:
    text = str(exc)
    if "Object contains unknown field" in text:
        return text.replace("Object contains unknown field", "unknown field")
    return text

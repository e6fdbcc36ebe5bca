"""Custom measurements (counters, gauges, timers with tags) and server lifecycle events.

The directory seed's shape: ``{"server": "...", "metrics": [{"name", "value", "type",
"tags", "timestamp"}]}``. Measurements are aggregated per UTC day into count / sum / min /
max (avg = sum / count).

Identity (what makes a retry count once): a measurement's or server event's ``id`` when the
sender gives one; otherwise its content as sent (server, name, type, tags, timestamp as sent
or none, value; for a server event server, type, ts, version, message, attributes) and how
many identical ones come before it in the same request. The receive time is never part of
it, so a retried request is a duplicate whenever it arrives; and two identical increments in
one request are two measurements. The consequence, documented in docs/api.md: without ``id``
and ``timestamp``, the same content sent again in another request is taken for a retry.

The texts follow the rules of the events (``events.text_problem``): no NUL, and the server
name within ``MAX_KEY_BYTES``; the tags, written as JSON, within ``MAX_TAGS_BYTES``, because
they are part of the daily aggregate's key.
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from .events import (
    MAX_KEY_BYTES,
    NUL,
    AttrKey,
    AttrValue,
    Limits,
    Name,
    ShortText,
    Timestamp,
    scan,
    text_problem,
    ts_ms,
)
from .exceptions import BatchError

MAX_TAGS_BYTES = 1500  # the tags as JSON: with name (200), server (600) and type, the key stays under 2704 bytes
MetricName = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[A-Za-z_][A-Za-z0-9_.:/-]*$")]
TagMap = Annotated[dict[Annotated[str, Meta(min_length=1, max_length=64)], Annotated[str, Meta(max_length=200)]], Meta(max_length=16)]


class Measurement(msgspec.Struct, forbid_unknown_fields=True):
    name: MetricName
    value: float
    type: Literal["counter", "gauge", "timer"] = "gauge"
    tags: TagMap = {}
    timestamp: Timestamp | None = None
    id: Annotated[str, Meta(min_length=1, max_length=128)] | None = None


class MeasurementBatch(msgspec.Struct, forbid_unknown_fields=True):
    server: Name
    metrics: Annotated[list[Measurement], Meta(max_length=10_000)]


class ServerEvent(msgspec.Struct, forbid_unknown_fields=True):
    server: Name
    type: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_.-]*$")]
    ts: Timestamp | None = None
    id: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    version: ShortText | None = None
    message: Annotated[str, Meta(max_length=2000)] | None = None
    attributes: Annotated[dict[AttrKey, AttrValue], Meta(max_length=32)] | None = None


_batch_decoder = msgspec.json.Decoder(MeasurementBatch)
_server_events_decoder = msgspec.json.Decoder(list[ServerEvent] | dict[str, list[ServerEvent]])
_encoder = msgspec.json.Encoder(order="sorted")


def _check_time(value: datetime | int | None, now_ms: int, limits: Limits, where: str) -> int:
    ts = now_ms if value is None else ts_ms(value)
    if ts < now_ms - limits.max_age_ms:
        raise BatchError(f"{where}: timestamp older than {limits.max_age_ms // 86_400_000} days; "
                         f"older ones are not accepted ({limits.age_setting})")
    if ts > now_ms + limits.max_skew_ms:
        raise BatchError(f"{where}: timestamp in the future beyond the allowed clock skew; check the sender's clock")
    return ts


def _check_texts(where: str, nul: bool, server: str, texts: tuple[str | None, ...],
                 mapping: dict[str, object] | None) -> None:
    """The events' text rules (``events.text_problem``); ``nul``: the body may hold a NUL."""
    problem = text_problem(server, f"{where}.server", MAX_KEY_BYTES)
    if problem is None and nul and (any(t is not None and NUL in t for t in texts) or any(
            NUL in k or (type(v) is str and NUL in v) for k, v in (mapping or {}).items())):
        problem = text_problem(NUL, where)
    if problem is not None:
        raise BatchError(problem)


class _Occurrences:
    """Content ids for measurements and server events sent without an id (see the module docstring)."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def id(self, *parts: object) -> str:
        content = "\x1f".join(map(str, parts))
        n = self._seen.get(content, 0)
        self._seen[content] = n + 1
        if n:  # the second identical one in this request is another measurement
            content += f"\x1e{n}"
        return "c-" + hashlib.sha256(content.encode()).hexdigest()[:32]


def _decode(decoder: msgspec.json.Decoder, body: bytes):
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as first:
        # A whole number written as a float (``1700000000.0``) is a whole number, as JSON
        # Schema says: retry once with such timestamps made integers.
        error: msgspec.DecodeError = first
        try:
            value = msgspec.json.decode(body)  # a type error can come before a syntax error further on
        except msgspec.DecodeError as broken:
            raise BatchError(str(broken)) from None
        if _whole_timestamps(value):
            try:
                return decoder.decode(msgspec.json.encode(value))
            except msgspec.ValidationError as again:
                error = again
        raise BatchError(str(error)) from None
    except msgspec.DecodeError as exc:
        raise BatchError(str(exc)) from None


def _whole_timestamps(value: object) -> bool:
    """Turn integer-valued float ``timestamp``/``ts`` fields into ints, anywhere; True if any changed."""
    changed = False
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("timestamp", "ts") and isinstance(item, float) and item.is_integer() and abs(item) < 2**63:
                value[key] = int(item)
                changed = True
            else:
                changed |= _whole_timestamps(item)
    elif isinstance(value, list):
        for item in value:
            changed |= _whole_timestamps(item)
    return changed


def measurement_rows(body: bytes, limits: Limits = Limits(), now_ms: int | None = None) -> list[tuple]:
    """Rows (measurement_id, server, name, type, tags_json, ts, value); the whole batch or an error."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    batch = _decode(_batch_decoder, body)
    nul, wide = scan(body)
    if wide:
        _check_texts("$", nul, batch.server, (), None)
    ids = _Occurrences()
    rows = []
    for i, m in enumerate(batch.metrics):
        where = f"$.metrics[{i}]"
        ts = _check_time(m.timestamp, now_ms, limits, where)
        encoded = _encoder.encode(m.tags)
        if len(encoded) > MAX_TAGS_BYTES:
            raise BatchError(f"the tags are {len(encoded)} bytes as JSON; at most {MAX_TAGS_BYTES} are accepted - `{where}.tags`")
        if wide and nul:
            _check_texts(where, nul, batch.server, (m.id,), m.tags)
        tags = encoded.decode()
        sent = "" if m.timestamp is None else ts  # the time as sent: never the receive time
        mid = m.id or ids.id(batch.server, m.name, m.type, tags, sent, m.value)
        rows.append((mid, batch.server, m.name, m.type, tags, ts, m.value))
    return rows


def server_event_rows(body: bytes, limits: Limits = Limits(), now_ms: int | None = None) -> list[tuple]:
    """Rows (event_id, server, type, ts, version, message, attributes_json)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    parsed = _decode(_server_events_decoder, body)
    if isinstance(parsed, dict):
        if set(parsed) != {"events"}:
            raise BatchError('an object body must have exactly one key, "events"')
        parsed = parsed["events"]
    nul, wide = scan(body)
    ids = _Occurrences()
    rows = []
    for i, e in enumerate(parsed):
        where = f"$.events[{i}]"
        ts = _check_time(e.ts, now_ms, limits, where)
        if wide:
            _check_texts(where, nul, e.server, (e.id, e.version, e.message), e.attributes)
        attrs = _encoder.encode(e.attributes).decode() if e.attributes else None
        sent = "" if e.ts is None else ts  # the time as sent: never the receive time
        eid = e.id or ids.id(e.server, e.type, sent, e.version or "", e.message or "", attrs or "")
        rows.append((eid, e.server, e.type, ts, e.version, e.message, attrs))
    return rows

"""Custom measurements (counters, gauges, timers with tags) and server lifecycle events.

The directory seed's shape: ``{"server": "...", "metrics": [{"name", "value", "type",
"tags", "timestamp"}]}``. Measurements are aggregated per UTC day into count / sum / min /
max (avg = sum / count); an optional ``id`` makes a retried submission count once.
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from .events import Limits, Name, ShortText, Timestamp, ts_ms
from .exceptions import BatchError

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
    attributes: Annotated[dict[str, str | int | float | bool | None], Meta(max_length=32)] | None = None


_batch_decoder = msgspec.json.Decoder(MeasurementBatch)
_server_events_decoder = msgspec.json.Decoder(list[ServerEvent] | dict[str, list[ServerEvent]])
_encoder = msgspec.json.Encoder(order="sorted")


def _check_time(value: datetime | int | None, now_ms: int, limits: Limits, where: str) -> int:
    ts = now_ms if value is None else ts_ms(value)
    if ts < now_ms - limits.max_age_ms or ts > now_ms + limits.max_skew_ms:
        raise BatchError(f"{where}: timestamp outside the accepted window (too old or in the future)")
    return ts


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
    rows = []
    for i, m in enumerate(batch.metrics):
        ts = _check_time(m.timestamp, now_ms, limits, f"metrics[{i}]")
        tags = _encoder.encode(m.tags).decode()
        mid = m.id or _content_id(batch.server, m.name, m.type, tags, ts, m.value)
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
    rows = []
    for i, e in enumerate(parsed):
        ts = _check_time(e.ts, now_ms, limits, f"events[{i}]")
        attrs = _encoder.encode(e.attributes).decode() if e.attributes else None
        eid = e.id or _content_id(e.server, e.type, str(ts), e.version or "", e.message or "")
        rows.append((eid, e.server, e.type, ts, e.version, e.message, attrs))
    return rows


def _content_id(*parts: object) -> str:
    """Without a client id, identical submissions are the same measurement (a retry)."""
    return "c-" + hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]

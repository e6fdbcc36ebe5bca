"""Time windows: ``period`` strings (1h … 90d) or explicit from/to.

Every time a window is made of lies in the years 1 to 9999 (what ``datetime`` and ``iso``
can write), the window compared with it (``previous``) included; anything else — a
5,000-digit number, a Unicode digit, ``0001-01-01T00:00:00+01:00`` (year 0 in UTC) — is a
``ValidationError`` with a hint, never a crash.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import NamedTuple

from ..exceptions import ValidationError

NAMED_PERIODS = ("1h", "6h", "12h", "1d", "7d", "30d", "90d")
_UNITS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}
_PERIOD = re.compile(r"^([0-9]{1,4})([mhdw])$")  # ASCII digits: \d also matches Unicode digits
_EPOCH_MS = re.compile(r"^[0-9]{1,15}$")  # what /openapi.json publishes for a time as epoch milliseconds
MAX_SPAN_MS = 400 * 86_400_000
EARLIEST_MS = -62_135_596_800_000  # 0001-01-01T00:00:00Z
END_OF_TIME_MS = 253_402_300_800_000  # 10000-01-01T00:00:00Z, the first moment ``iso`` cannot write
_TIME_HINT = "use RFC 3339, e.g. 2026-11-01T00:00:00Z, or epoch milliseconds (ASCII digits), in the years 1 to 9999"


HOUR_MS = 3_600_000
DAY_MS = 86_400_000
HOUR_GRAIN_MAX_MS = 2 * DAY_MS  # windows up to two days are counted by the hour, longer ones by the day


class Window(NamedTuple):
    """A half-open range [start_ms, end_ms) aligned to its grain's boundaries (UTC)."""

    start_ms: int
    end_ms: int
    grain: str = "hour"  # "hour" | "day"

    @property
    def span_ms(self) -> int:
        return self.end_ms - self.start_ms

    @property
    def grain_ms(self) -> int:
        return HOUR_MS if self.grain == "hour" else DAY_MS

    def previous(self) -> Window:
        return Window(self.start_ms - self.span_ms, self.start_ms, self.grain)


def align(start_ms: int, end_ms: int, grain: str | None = None) -> Window:
    """Widen [start, end) to whole hours (spans up to two days) or whole UTC days.

    Every figure is computed over the aligned window, and answers say which window that
    was, so rollups (hourly and daily) answer exactly, with no partial buckets.
    """
    grain = grain or ("hour" if end_ms - start_ms <= HOUR_GRAIN_MAX_MS else "day")
    size = HOUR_MS if grain == "hour" else DAY_MS
    start = start_ms - start_ms % size
    end = -(-end_ms // size) * size
    return Window(start, max(end, start + size), grain)


def period_ms(text: str) -> int:
    match = _PERIOD.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValidationError(
            f"period {text!r} is not understood",
            hint=f"use one of {', '.join(NAMED_PERIODS)} (or N followed by m, h, d or w)",
        )
    span = int(match.group(1)) * _UNITS[match.group(2)]
    if span > MAX_SPAN_MS:
        raise ValidationError(f"period {text!r} is longer than 400 days")
    return span


def parse_time(text: str, name: str) -> int:
    """RFC 3339 / ISO 8601 (a date alone means midnight UTC) or epoch milliseconds."""
    text = text.strip()
    shown = text if len(text) <= 40 else text[:40] + "…"
    if _EPOCH_MS.match(text):
        ms = int(text)
    else:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            ms = int(moment.timestamp() * 1000)
        except (ValueError, OverflowError):
            raise ValidationError(f"{name}={shown!r} is not a time", hint=_TIME_HINT) from None
    if not EARLIEST_MS <= ms < END_OF_TIME_MS:
        raise ValidationError(f"{name}={shown!r} is outside the years 1 to 9999", hint=_TIME_HINT)
    return ms


def window(period: str | None = "7d", start: str | None = None, end: str | None = None,
           now_ms: int | None = None, grain: str | None = None) -> Window:
    """The aligned window for a request.

    ``period=7d`` means the last seven calendar days including today (UTC); ``period=6h``
    the last six clock hours including the current one. ``from``/``to`` are widened to
    whole buckets.
    """
    if grain not in (None, "hour", "day"):
        raise ValidationError(f"grain {grain!r} is not understood", hint="use hour or day")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    end_ms = parse_time(end, "to") if end else now_ms
    if start:
        start_ms = parse_time(start, "from")
        if start_ms >= end_ms:
            raise ValidationError("`from` must be before `to`")
    else:
        span = period_ms(period or "7d")
        grain = grain or ("hour" if span <= HOUR_GRAIN_MAX_MS else "day")
        size = HOUR_MS if grain == "hour" else DAY_MS
        last = end_ms - 1  # [.., end) ends with the bucket holding end - 1, also when end is on a boundary
        start_ms = last - last % size - (max(span // size, 1) - 1) * size
    if end_ms - start_ms > MAX_SPAN_MS:
        raise ValidationError("the time range is longer than 400 days", hint="ask for at most 400 days (a later `from` or an earlier `to`)")
    aligned = align(start_ms, end_ms, grain)
    if aligned.previous().start_ms < EARLIEST_MS or aligned.end_ms >= END_OF_TIME_MS:
        raise ValidationError("the window (and the one before it, which answers compare with) must lie in the years 1 to 9999",
                              hint="ask about a later (or earlier) window")
    return aligned


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

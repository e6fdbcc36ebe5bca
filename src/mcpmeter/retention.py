"""Retention: how long raw events and rollups are kept, the pruning that enforces it, and how
old an event the collector may accept without breaking "a retry counts once".

Pruning deletes raw events with their ids. An event older than the raw retention would be
pruned at the next run, and its retry - a new event again, its id gone - counted a second
time; so the collector accepts no event older than the retention (``max_event_age``). Prune
cuts fall at UTC day starts at or before ``now - retention``, so an accepted event is pruned
only once it is older than the retention, and its retry is refused from then on.
"""

from __future__ import annotations

import time

from . import settings
from .events import Limits
from .storage.base import Store

DAY_MS = 86_400_000


def prune(store: Store, retention_days: int | None = None, rollup_retention_days: int | None = None,
          now_ms: int | None = None) -> dict[str, int]:
    raw_days = settings.get("MCPMETER_RETENTION_DAYS", retention_days)
    rollup_days = settings.get("MCPMETER_ROLLUP_RETENTION_DAYS", rollup_retention_days)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    # Cut at day boundaries so a day's rollup is never half-pruned.
    raw_cut = now_ms - now_ms % DAY_MS - raw_days * DAY_MS
    rollup_cut = now_ms - now_ms % DAY_MS - max(rollup_days, raw_days) * DAY_MS
    return store.prune(raw_cut, rollup_cut)


def max_event_age(max_age_days: int | None = None, retention_days: int | None = None) -> tuple[int, str]:
    """The oldest accepted event, in days, and the setting that decides it: the smaller of
    ``MCPMETER_MAX_EVENT_AGE_DAYS`` and ``MCPMETER_RETENTION_DAYS``."""
    max_age = settings.get("MCPMETER_MAX_EVENT_AGE_DAYS", max_age_days)
    retention = settings.get("MCPMETER_RETENTION_DAYS", retention_days)
    if retention < max_age:
        return retention, "MCPMETER_RETENTION_DAYS: older events would be pruned"
    return max_age, "MCPMETER_MAX_EVENT_AGE_DAYS"


def ingest_limits(max_events: int | None = None) -> Limits:
    """The collector's acceptance limits from the settings (batch size, age, clock skew)."""
    days, setting = max_event_age()
    return Limits(
        max_events=settings.get("MCPMETER_MAX_BATCH_EVENTS", max_events),
        max_age_ms=days * DAY_MS,
        max_skew_ms=settings.get("MCPMETER_MAX_CLOCK_SKEW_SECONDS") * 1000,
        age_setting=setting,
    )

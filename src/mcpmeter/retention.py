"""Retention: how long raw events and rollups are kept, and the pruning that enforces it."""

from __future__ import annotations

import time

from . import settings
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

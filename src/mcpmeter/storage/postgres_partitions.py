"""Daily RANGE partitions of the raw ``events`` table.

One partition per UTC day, named ``events_dYYYYMMDD``. Retention cuts fall on day
boundaries (``retention.prune``), so expiring raw events is a ``DROP TABLE`` of whole
partitions, not a row-by-row ``DELETE``; a cut inside a day (only when ``Store.prune`` is
called with such a cut) deletes the rest row by row, so the result is the same as SQLite's.

Partitions are created when an ingest first needs one (together with the days up to
``AHEAD_DAYS`` ahead, so this happens about once a week), each in its own short
transaction under an advisory lock, so collectors racing to create the same day do not
collide. A new partition is created standalone and then ATTACHed, which takes only a
SHARE UPDATE EXCLUSIVE lock on ``events``: ingest and reads carry on meanwhile.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psycopg

DAY_MS = 86_400_000
AHEAD_DAYS = 7
LOCK_KEY = 0x6D63706D_7061  # "mcpmpa": partition management, per database
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAME = re.compile(r"^events_d(\d{8})$")


def day_of(ts_ms: int) -> int:
    return ts_ms - ts_ms % DAY_MS


def name_of(day_ms: int) -> str:
    return "events_d" + (_EPOCH + timedelta(milliseconds=day_ms)).strftime("%Y%m%d")


def _day_from_name(name: str) -> int | None:
    m = _NAME.match(name)
    if not m:
        return None
    d = datetime.strptime(m.group(1), "%Y%m%d").replace(tzinfo=UTC)
    return (d - _EPOCH) // timedelta(milliseconds=1)


def existing(conn: psycopg.Connection) -> dict[int, str]:
    """The partitions ``events`` has now: {day start in ms: table name}."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'events'::regclass"
    ).fetchall()
    found = {}
    for (name,) in rows:
        day = _day_from_name(name)
        if day is not None:
            found[day] = name
    return found


def create(conn: psycopg.Connection, days: set[int], now_ms: int) -> set[int]:
    """Create the partitions of ``days`` (and of the days just ahead of ``now_ms``) that are
    missing. Runs in the caller's transaction, which should do nothing else. Returns every
    day that has a partition afterwards."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
    have = existing(conn)
    today = day_of(now_ms)
    wanted = set(days) | {today + i * DAY_MS for i in range(AHEAD_DAYS + 1)}
    for day in sorted(wanted - set(have)):
        name = name_of(day)
        conn.execute(f"CREATE TABLE {name} (LIKE events INCLUDING DEFAULTS)")
        conn.execute(f"ALTER TABLE events ATTACH PARTITION {name} FOR VALUES FROM ({day}) TO ({day + DAY_MS})")
        have[day] = name
    return set(have)

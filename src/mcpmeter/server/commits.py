"""What one writer commit stored, summarised once for every subscriber.

The writer hands each committed group to its subscribers (``Writer.subscribe``) as one
``Commit``: the rows the store really inserted per project (duplicates already left out)
and, per project, ``ProjectBatch.cells()``: the rows aggregated ONCE by (kind, server, tool,
client, ok, error type), each cell with a duration histogram in the union of every
histogram's bucket bounds and its events per minute. ``/metrics`` and OTLP metric export (``exporters.aggregate``) and the live feed
(``dashboard.live``) read these cells instead of aggregating the rows again; what they still
take from the rows themselves is selection, not aggregation (the newest calls for the feed,
handshake timestamps, ``auth`` / ``sdk.dropped`` rows, rows that came as OTLP spans).

The cells are computed on first use, in the writer thread (subscribers run there one after
the other), so a commit nobody reads the cells of costs nothing; the event loop only reads
cells already computed. Rollups are aggregated inside the store's own transaction
(``storage.rollup.aggregate``) before the commit exists, so they do not share this pass.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from operator import attrgetter

from ..events import Row

MINUTE_MS = 60_000

# Histogram bucket bounds in milliseconds. The gateway's names use the gateway's own
# boundaries (5 ms .. 300 s, fine below a second where most MCP calls are); the
# OpenTelemetry MCP convention's metric uses the boundaries the convention recommends.
# Cells count durations in the union of both; each histogram projects the union onto its own.
GATEWAY_BOUNDS_MS = (5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000, 30000, 60000, 120000, 300000)
SEMCONV_BOUNDS_MS = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000, 120000, 300000)
UNION_BOUNDS_MS = tuple(sorted(set(GATEWAY_BOUNDS_MS) | set(SEMCONV_BOUNDS_MS)))

CellKey = tuple  # (kind, server, tool, client_name, ok, error_type)
_key_of = attrgetter("kind", "server", "tool", "client_name", "ok", "error_type")
_duration_of = attrgetter("duration_ms")
_ts_of = attrgetter("ts")


class Cell:
    """Additive aggregate of one key: events, timed events, their duration sum, union-bucket counts."""

    __slots__ = ("buckets", "events", "minutes", "sum_ms", "timed")

    def __init__(self) -> None:
        self.events = 0
        self.timed = 0
        self.sum_ms = 0.0
        self.buckets: dict[int, int] = {}  # index into UNION_BOUNDS_MS (len = +Inf) -> count
        self.minutes: dict[int, int] = {}  # minute (epoch ms) -> events, in order of first appearance

    def merge(self, other: Cell) -> None:
        self.events += other.events
        self.timed += other.timed
        self.sum_ms += other.sum_ms
        buckets = self.buckets
        for i, n in other.buckets.items():
            buckets[i] = buckets.get(i, 0) + n
        minutes = self.minutes
        for m, n in other.minutes.items():
            minutes[m] = minutes.get(m, 0) + n


def aggregate(rows: Sequence[Row]) -> dict[CellKey, Cell]:
    """The rows in cells, keys in order of first appearance (C-level iteration over the rows)."""
    cells: dict[CellKey, Cell] = {}
    get = cells.get
    union = UNION_BOUNDS_MS
    for key, d, ts in zip(map(_key_of, rows), map(_duration_of, rows), map(_ts_of, rows)):
        cell = get(key)
        if cell is None:
            cell = cells[key] = Cell()
        cell.events += 1
        minutes = cell.minutes
        minute = ts - ts % MINUTE_MS
        minutes[minute] = minutes.get(minute, 0) + 1
        if d is not None:
            cell.sum_ms += d
            cell.timed += 1
            buckets = cell.buckets
            i = bisect_left(union, d)
            buckets[i] = buckets.get(i, 0) + 1
    return cells


class ProjectBatch:
    """One project's rows of one commit; ``cells`` aggregates them, once, on first use."""

    __slots__ = ("_cells", "project_id", "rows")

    def __init__(self, project_id: int, rows: Sequence[Row]) -> None:
        self.project_id = project_id
        self.rows = rows
        self._cells: dict[CellKey, Cell] | None = None

    def cells(self) -> dict[CellKey, Cell]:
        """The rows aggregated, computed on the first call and kept."""
        cells = self._cells
        if cells is None:
            cells = self._cells = aggregate(self.rows)
        return cells


class Commit:
    """One writer transaction as its subscribers see it."""

    __slots__ = ("projects", "seconds", "stored", "submitted")

    def __init__(self, stored: dict[int, list[Row]], submitted: int, seconds: float) -> None:
        self.projects = {project_id: ProjectBatch(project_id, rows) for project_id, rows in stored.items()}
        self.submitted = submitted  # rows handed to the writer, duplicates included
        self.seconds = seconds  # the transaction's duration
        self.stored = sum(len(rows) for rows in stored.values())  # rows really inserted

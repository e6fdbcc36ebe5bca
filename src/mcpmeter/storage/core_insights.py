"""The queries of usage actions, the activation funnel and custom measurements, for both
stores (mixed into ``core.SQLStore``), written once with ``?`` placeholders over the hooks
of ``dialect.SQLBase``. Each reads a rollup kept at ingest (``rollup.aggregate``), so its
cost grows with buckets and distinct users, not with events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import EventFilter
from .dialect import SQLBase, dims, whole_days
from .rollup import PROTOCOL_KINDS


class InsightQueries(SQLBase):
    """Usage actions, activation and measurements (``storage.base.Store``)."""

    def action_counts(self, f: EventFilter, grain: str) -> list[tuple[Any, ...]]:
        """Events of the other usage actions (``rollup.is_action``) in the window: rows (bucket,
        kind, server, count) from the hourly or daily cells."""
        table = "rollup_hour" if grain == "hour" else "rollup_day"
        where, params = dims(f)
        kinds, kind_params = self._in("kind", sorted(PROTOCOL_KINDS))
        rows = self._fetch(
            f.project_id,
            f"SELECT bucket, kind, server, sum(calls) FROM {table} WHERE project_id = ? AND bucket >= ? AND bucket < ? "
            f"AND NOT ({kinds}) AND kind NOT LIKE '%/%'{where} GROUP BY bucket, kind, server",
            [f.project_id, f.start_ms, f.end_ms, *kind_params, *params])
        return [(bucket, kind, server, int(n)) for bucket, kind, server, n in rows]

    def action_users(self, f: EventFilter, grain: str) -> list[tuple[Any, ...]]:
        """Distinct users per (server, action kind) of the other usage actions in the window: rows
        (server, kind, users), from the hourly or daily sets as ``grain`` says (the window is aligned to it)."""
        table, column = ("action_user_hour", "hour") if grain == "hour" else ("action_user_day", "day")
        sql = (f"SELECT server, kind, count(DISTINCT user_hash) FROM {table} "
               f"WHERE project_id = ? AND {column} >= ? AND {column} < ?")
        params: list[Any] = [f.project_id, f.start_ms, f.end_ms]
        if f.server is not None:
            sql += " AND server = ?"
            params.append(f.server)
        return self._fetch(f.project_id, sql + " GROUP BY server, kind", params)

    def activation(self, f: EventFilter) -> list[tuple[Any, ...]]:
        """The activation funnel of whom it follows (``rollup.activation_subject``) first seen in the
        window, per (server, client): rows (server, client, followed, sessions, handshake, listed,
        called, listed_not_called). Only the server and client filters apply. A window of whole
        UTC days reads the daily cells, any other the rows of whom it follows."""
        daily = whole_days(f)
        if daily:
            sql = ("SELECT server, client, sum(followed), sum(sessions), sum(handshake), sum(listed), sum(called), "
                   "sum(listed_only) FROM activation_day WHERE project_id = ? AND day >= ? AND day < ?")
        else:
            sql = ("SELECT server, client, count(*), sum(CASE WHEN subject LIKE 's:%' THEN 1 ELSE 0 END), count(handshake_ts), "
                   "count(list_ts), count(call_ts), sum(CASE WHEN list_ts IS NOT NULL AND call_ts IS NULL THEN 1 ELSE 0 END) "
                   "FROM activation WHERE project_id = ? AND first_ts >= ? AND first_ts < ?")
        params: list[Any] = [f.project_id, f.start_ms, f.end_ms]
        for column, value in (("server", f.server), ("client", f.client)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        rows = self._fetch(f.project_id, sql + " GROUP BY server, client", params)
        if daily:  # '' is the cells' missing client
            rows = [(server, client or None, *counts) for server, client, *counts in rows if counts[0]]
        return [(server, client, *(int(n) for n in counts)) for server, client, *counts in rows]

    def measurement_buckets(self, f: EventFilter, names: Sequence[str] = (), grain: str = "day") -> list[tuple[Any, ...]]:
        """(bucket, server, name, type, tags, count, sum, min, max, last_value) per hour or UTC day of
        the window (aligned to ``grain``), for the metrics ``names`` (all when empty)."""
        table, column = ("measurement_hour", "hour") if grain == "hour" else ("measurement_day", "day")
        sql = (f"SELECT {column}, server, name, type, tags, count, sum, min, max, last_value FROM {table} "
               f"WHERE project_id = ? AND {column} >= ? AND {column} < ?")
        params: list[Any] = [f.project_id, f.start_ms, f.end_ms]
        if names:
            name_sql, name_params = self._in("name", list(names))
            sql += f" AND {name_sql}"
            params += name_params
        if f.server is not None:
            sql += " AND server = ?"
            params.append(f.server)
        c = self._dialect.collate
        return self._fetch(f.project_id, sql + f" ORDER BY name{c}, {column}, server{c}, tags{c}, type{c}", params)

"""The usage questions, declared once: name, typed parameters and filters, answer, summary.

Every surface that asks a usage question is derived from this registry:

- the HTTP routes ``GET /v1/usage/<name>`` (``server/collector/usage.py``) and their part of
  ``/openapi.json`` (``server/collector/openapi.py``);
- the MCP server's sources and the filter arguments of its tools (``mcp_server/``);
- the filter options of ``mcpmeter report`` (``cli/main.py``);
- the dashboard's preloaded answers and its filter bar (``server/dashboard/pages.py`` serves
  ``client_registry()`` to the page, which ``static/js/api.js`` and ``filters.js`` read);
- the exports: each question declares the tables of its answer (``tables``), which
  ``format=csv|markdown`` on its HTTP route, the dashboard's export button and
  ``mcpmeter report --format`` write (``exports.py`` renders them).

Adding a filter dimension means one ``Param`` in ``DIMENSIONS`` plus the field of the same name
in ``Query`` and the storage that filters on it; adding a question means one ``Question`` in
``QUESTIONS`` (and its answer). ``tests/server/collector/test_usage_registry.py`` checks that each
surface exposes exactly what is declared here.

This module needs no web framework: the CLI imports it on a base install.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..exceptions import ValidationError
from ..storage.base import Store
from . import exports, queries
from .exports import FORMATS, Table
from .periods import NAMED_PERIODS, Window, iso, window
from .queries import Query
from .report import build_report

Params = Mapping[str, "str | None"]
Answer = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class Param:
    """One query parameter: its name on every surface, its JSON Schema and a one-line description."""

    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    label: str = ""  # dimensions: what the dashboard's filter bar calls it ("Server")
    plural: str = ""  # dimensions: "servers" ("All servers" in the filter bar)
    default: str | None = None


# ---- filters ----------------------------------------------------------------------------------

_MOMENT = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "string", "pattern": "^[0-9]{1,15}$"},
                     {"type": "string", "maxLength": 0, "description": "empty: not given"}]}

PERIOD = Param(
    "period", "Time window ending now: 1h, 6h, 12h, 1d, 7d, 30d or 90d (any N followed by m, h, d or w also works, "
              "e.g. 14d). Days are whole UTC calendar days including today. At most 400 days.",
    {"type": "string", "default": "7d", "pattern": "^(0*[1-9][0-9]{0,3}[mhdw])?$", "examples": list(NAMED_PERIODS)},
    default="7d")
WINDOW = (
    PERIOD,
    Param("from", "Start, RFC 3339 or epoch ms; overrides period. Must be before `to`, at most 400 days before it.", _MOMENT),
    Param("to", "End, RFC 3339 or epoch ms (default now); the period then ends here.", _MOMENT),
)
# Each dimension narrows the Query field (and the storage EventFilter field) of the same name.
DIMENSIONS = (
    Param("server", "Only this MCP server (its recorded name, e.g. `weblab`). Omit for all servers.",
          label="Server", plural="servers"),
    Param("tool", "Only this tool. Omit for all tools.", label="Tool", plural="tools"),
    Param("client", "Only calls from this MCP client (e.g. `claude-code`, `cursor`). Omit for all clients.",
          label="Client", plural="clients"),
)
FILTERS = (*WINDOW, *DIMENSIONS)
GRAIN = Param("grain", "Bucket size; default: hours for windows up to two days, else days.",
              {"type": "string", "enum": ["hour", "day"]})
# Exports (HTTP only: the CLI has --format, the MCP tools answer JSON and Markdown themselves).
FORMAT = Param("format", "The answer as `json` (default), `csv` (one table of it, see `table`) or `markdown` (a document), "
                         "sent as a download; without it the `Accept` header chooses (text/csv, text/markdown, "
                         "application/json).", {"type": "string", "enum": [*FORMATS, ""]})  # "": not given


# ---- questions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    """One usage question: ``answer(store, query, **options)`` returns JSON-ready data for the window."""

    name: str  # the path segment: GET /v1/usage/<name>
    summary: str
    answer: Answer
    options: tuple[Param, ...] = ()  # parameters of this question beyond the filters and grain
    filters: tuple[Param, ...] = FILTERS
    schema: Literal["Answer", "Summary"] = "Answer"  # the /openapi.json component describing the answer
    tables: tuple[Table, ...] = ()  # the lists of its answer a CSV file can hold; the first is the default

    @property
    def path(self) -> str:
        return f"/v1/usage/{self.name}"

    @property
    def parameters(self) -> tuple[Param, ...]:
        return (*self.filters, GRAIN, *self.options)

    @property
    def export_parameters(self) -> tuple[Param, ...]:
        names = [t.name for t in self.tables]
        return (FORMAT, Param("table", f"With `format=csv`: which table of the answer (default `{names[0]}`).",
                              {"type": "string", "enum": [*names, ""]}))  # "": not given

    @property
    def http_parameters(self) -> tuple[Param, ...]:
        """What its route ``GET /v1/usage/<name>`` takes: the parameters and the export ones."""
        return (*self.parameters, *self.export_parameters)

    def table(self, name: str | None) -> Table:
        for t in self.tables:
            if name in (None, "", t.name):
                return t
        raise ValidationError(f"{self.name!r} has no table {name!r}", hint=f"use one of {', '.join(t.name for t in self.tables)}")

    def check_export(self, fmt: str, table: str | None = None) -> None:
        """Refuse an export this question cannot give (before anything is computed)."""
        if fmt not in FORMATS:
            raise ValidationError(f"unknown format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")
        if fmt == "csv":
            self.table(table)
        elif table:
            raise ValidationError("`table` goes with format=csv", hint="drop `table`, or ask for format=csv")

    def export(self, answer: dict[str, Any], fmt: str, table: str | None = None) -> str:
        """The answer as a ``fmt`` file (``FORMATS``); ``table`` picks the CSV's table."""
        self.check_export(fmt, table)
        if fmt == "csv":
            return exports.to_csv(answer, self.table(table))
        if fmt == "markdown":
            if self.name == "report":
                return exports.to_markdown(answer)
            return exports.generic_markdown(self.summary, answer, self.tables)
        return exports.to_json(answer)


def measurements(store: Store, q: Query, name: str | None = None) -> dict[str, Any]:
    """Custom measurements per series (name, server, type, tags), one entry per day."""
    series: dict[tuple, dict[str, Any]] = {}
    for day, server, metric, kind, tags, count, total, low, high, last in store.measurement_days(q.filter, name):
        entry = series.setdefault((metric, server, kind, tags), {
            "name": metric, "server": server, "type": kind, "tags": json.loads(tags), "days": []})
        entry["days"].append({"day": iso(day)[:10], "count": count, "sum": total, "min": low, "max": high,
                              "avg": total / count, "last": last})
    return {**q.describe(), "series": list(series.values())}


def server_events(store: Store, q: Query) -> dict[str, Any]:
    """Server lifecycle events (restart, deploy, config change) in the window."""
    return {**q.describe(), "events": [
        {"ts": iso(ts), "server": server, "type": kind, "version": version, "message": message,
         "attributes": json.loads(attrs) if attrs else None}
        for ts, server, kind, version, message, attrs in store.server_events(q.filter)]}


QUESTIONS: dict[str, Question] = {q.name: q for q in (
    Question("summary", "Users, calls, success rate, latency and top tools for a window", queries.summary, schema="Summary",
             tables=(Table("tools", "tools"), Table("summary"))),
    Question("tools", "Per tool: calls, share, errors, error rate, latency, users, last used; tools listed but never called",
             queries.tools, tables=(Table("tools", "tools"), Table("never_called", "never_called"))),
    Question("timeseries", "Per hour or day: calls, errors, success rate, users, latency percentiles, calls of the top "
                           "tools; server events as markers", queries.timeseries,
             tables=(Table("points", "points"), Table("markers", "markers"))),
    Question("users", "Distinct, new and returning users per bucket", queries.users, tables=(Table("points", "points"),)),
    Question("errors", "Error types per tool with counts and share; the most recent failures with their messages",
             queries.errors, tables=(Table("types", "types"), Table("recent", "recent"))),
    Question("clients", "Clients with calls, share and users; client versions and protocol versions", queries.clients,
             tables=(Table("clients", "clients"), Table("versions", "versions"), Table("protocol_versions", "protocol_versions"))),
    Question("sessions", "Sessions: length, calls and tools per session, handshake latencies", queries.sessions,
             tables=(Table("sessions"),)),
    Question("report", "Every answer above in one document (what `mcpmeter report --url` shows)", build_report, tables=(
        # the CSV tables of `mcpmeter report --format csv --csv-table …`, with their columns
        Table("tools", "tools", ("server", "tool", "calls", "share", "errors", "success_rate", "users", "p50_ms", "p95_ms",
                                 "p99_ms", "last_used")),
        Table("timeseries", "timeseries", ("t", "calls", "errors", "users", "p95_ms")),
        Table("errors", "error_types", ("server", "tool", "error_type", "count", "share", "last_seen")),
        Table("clients", "clients", ("client", "calls", "share", "errors", "users")),
        Table("never_called", "never_called"), Table("recent_errors", "recent_errors"),
        Table("protocol_versions", "protocol_versions"))),
    Question("measurements", "Daily count/sum/min/max/avg/last of custom measurements", measurements,
             options=(Param("name", "Only this metric"),), tables=(Table("series", "series"),)),
    Question("server-events", "Server lifecycle events (restart, deploy, config change) in the window", server_events,
             tables=(Table("events", "events"),)),
)}


# ---- asking -----------------------------------------------------------------------------------


def question(name: str) -> Question:
    try:
        return QUESTIONS[name]
    except KeyError:
        raise ValidationError(f"no usage question {name!r}", hint=f"ask one of {', '.join(QUESTIONS)}") from None


def check_names(q: Question, params: Params, accepted: tuple[Param, ...] | None = None) -> None:
    """Refuse parameters the question does not take (a typo would otherwise widen the answer silently);
    ``accepted``: what the asking surface takes (default ``q.parameters``)."""
    allowed = {p.name for p in (q.parameters if accepted is None else accepted)}
    unknown = set(params) - allowed
    if unknown:
        raise ValidationError(f"unknown query parameter(s): {', '.join(sorted(unknown))}",
                              hint=f"allowed: {', '.join(sorted(allowed))}")


def window_of(params: Params, now_ms: int | None = None) -> Window:
    """The aligned window the window filters and ``grain`` name (ValidationError, with a hint, when they are wrong)."""
    return window(params.get("period"), params.get("from"), params.get("to"), now_ms=now_ms, grain=params.get("grain"))


def query_for(project_id: int, win: Window, params: Params) -> Query:
    return Query(project_id, win, **{d.name: params.get(d.name) for d in DIMENSIONS})


def parse(q: Question, params: Params, project_id: int | Callable[[], int],
          accepted: tuple[Param, ...] | None = None) -> tuple[Query, dict[str, str | None]]:
    """The query and the question's own options, from query parameters (as a URL gives them);
    ``accepted``: the parameters the asking surface takes (default ``q.parameters``).

    Wrong parameters are reported before ``project_id`` (a number, or a function that looks it up) is called.
    """
    check_names(q, params, accepted)
    win = window_of(params)
    query = query_for(project_id if isinstance(project_id, int) else project_id(), win, params)
    return query, {p.name: params.get(p.name) for p in q.options}


def ask(store: Store, q: Question, query: Query, options: Mapping[str, str | None] = {}) -> dict[str, Any]:
    return q.answer(store, query, **options)


def client_registry() -> dict[str, Any]:
    """What the dashboard's scripts need to know: the filters, in URL order, and the periods it offers."""
    return {
        "filters": [{"name": p.name, "kind": "window" if p in WINDOW else "dimension", "label": p.label,
                     "plural": p.plural} for p in FILTERS],
        "periods": list(NAMED_PERIODS),
        "default_period": PERIOD.default,
        "questions": list(QUESTIONS),
        "formats": list(FORMATS),
    }

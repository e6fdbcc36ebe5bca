"""Alerts, defined once: the Prometheus rules (``deploy/prometheus/alerts.yml``) and the
dashboard's banner are both made from the definitions below.

What owners ask to be told about:

- **Error budget burning** per server and tool: the share of failed tool calls (tool and
  server errors: ``ok`` false, ``success="false"`` on ``mcp_tool_executions_total``) against
  an SLO of ``SLO`` successful calls, with the multi-window burn rates of the SRE workbook:
  a page when 1 h and 5 min both burn the budget 14.4 times too fast (2 % of a month's budget
  in an hour), a ticket when 6 h and 30 min both burn it 6 times too fast. A tool needs
  ``MIN_CALLS`` calls in the long window before it can alert.
- **A server gone silent**: a server with tool calls in the last day and none in the last hour.
- **Ingest refused**: more than 5 % of the requests to the ingest endpoints answered with an
  error (401/403 keys, 413/415/400/422 bad data, 429 rate limits, 503 store down) over 10 min.

``python -m mcpmeter.analytics.alerts > deploy/prometheus/alerts.yml`` writes the rules (a test
holds the file to it and runs ``promtool test rules`` on it); ``evaluate`` computes the same
conditions from a store for the dashboard (whole hours from the rollups, the edges of each
window from the raw events, so "the last 5 minutes" means exactly that), and ``RecentRequests``
keeps the collector's own answers per minute for the ingest conditions.

The rules read mcpmeter's own labels (``MCPMETER_METRICS_LABELS=mcpmeter``, the default).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..storage.base import EventFilter, Store
from .periods import HOUR_MS

SLO = 0.99  # the share of tool calls that succeed, as the error budgets count it
MIN_CALLS = 10  # calls a tool needs in the long window before its error rate can alert
INGEST_ROUTES = ("/v1/events", "/v1/traces", "/v1/measurements", "/v1/server-events", "/metrics")  # POST /metrics: the gateway API
REFUSED_SHARE = 0.05
REFUSED_WINDOW = "10m"
SILENT_AFTER = "1h"
SILENT_BASELINE = "1d"

_UNITS_MS = {"m": 60_000, "h": HOUR_MS, "d": 24 * HOUR_MS}


def ms(duration: str) -> int:
    return int(duration[:-1]) * _UNITS_MS[duration[-1]]


@dataclass(frozen=True)
class BurnRate:
    alert: str
    severity: str
    long: str
    short: str
    factor: float
    for_: str

    @property
    def threshold(self) -> float:
        """The error ratio at which the budget burns ``factor`` times too fast."""
        return round(self.factor * (1 - SLO), 6)


BURN_RATES = (
    BurnRate("MCPToolErrorBudgetBurnFast", "page", "1h", "5m", 14.4, "2m"),
    BurnRate("MCPToolErrorBudgetBurnSlow", "ticket", "6h", "30m", 6.0, "15m"),
)


# ---- the Prometheus rules -----------------------------------------------------------------------

_BY_TOOL = "project, server, tool"
_CALLS = "mcp_tool_executions_total"


def _ratio(window: str) -> str:
    return (f'sum by ({_BY_TOOL}) (rate({_CALLS}{{success="false"}}[{window}]))\n'
            f"  / sum by ({_BY_TOOL}) (rate({_CALLS}[{window}]))")


def _ingest(selector: str, window: str) -> str:
    routes = "|".join(INGEST_ROUTES)
    return f'sum by (instance) (rate(mcpmeter_http_requests_total{{route=~"{routes}"{selector}}}[{window}]))'


def rules() -> list[dict[str, Any]]:
    """The alerting rules, in Prometheus' rule-file shape."""
    out: list[dict[str, Any]] = []
    for b in BURN_RATES:
        out.append({
            "alert": b.alert,
            "expr": (f"(\n  {_ratio(b.long)}\n) > {b.threshold}\nand\n(\n  {_ratio(b.short)}\n) > {b.threshold}\n"
                     f"and\nsum by ({_BY_TOOL}) (increase({_CALLS}[{b.long}])) >= {MIN_CALLS}"),
            "for": b.for_,
            "labels": {"severity": b.severity},
            "annotations": {
                "summary": "{{ $labels.tool }} on {{ $labels.server }} burns its error budget " + f"{b.factor:g}x too fast",
                "description": (f"More than {b.threshold * 100:g}% of the calls of {{{{ $labels.tool }}}} on "
                                f"{{{{ $labels.server }}}} (project {{{{ $labels.project }}}}) failed over the last {b.long} "
                                f"and the last {b.short} (SLO {SLO * 100:g}% success)."),
            },
        })
    out.append({
        "alert": "MCPServerSilent",
        "expr": (f"sum by (project, server) (increase({_CALLS}[{SILENT_BASELINE}])) > 0\n"
                 f"unless\nsum by (project, server) (increase({_CALLS}[{SILENT_AFTER}])) > 0"),
        "for": "5m",
        "labels": {"severity": "ticket"},
        "annotations": {
            "summary": "{{ $labels.server }} has gone silent",
            "description": (f"{{{{ $labels.server }}}} (project {{{{ $labels.project }}}}) had tool calls in the last "
                            f"{SILENT_BASELINE} and none in the last {SILENT_AFTER}."),
        },
    })
    refused, answered = _ingest(', code!~"2.."', REFUSED_WINDOW), _ingest("", REFUSED_WINDOW)
    out.append({
        "alert": "MCPMeterIngestRefused",
        "expr": f"(\n  {refused}\n  / {answered}\n) > {REFUSED_SHARE}",
        "for": "5m",
        "labels": {"severity": "page"},
        "annotations": {
            "summary": "the collector {{ $labels.instance }} refuses ingest requests",
            "description": (f"More than {REFUSED_SHARE * 100:g}% of the ingest requests to {{{{ $labels.instance }}}} were "
                            f"answered with an error over the last {REFUSED_WINDOW} (see mcpmeter_http_requests_total by code: "
                            "401/403 keys, 429 rate limits, 503 store)."),
        },
    })
    return out


def _yaml_value(value: str, indent: str) -> str:
    if "\n" in value:
        return "|-\n" + "\n".join(indent + "  " + line for line in value.splitlines())
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rules_yaml() -> str:
    lines = ["# Alerting rules for mcpmeter, generated from src/mcpmeter/analytics/alerts.py:",
             "#   python -m mcpmeter.analytics.alerts > deploy/prometheus/alerts.yml",
             "# The dashboard shows the same conditions (GET /v1/alerts). Tested with `promtool test rules`",
             "# (tests/server/test_alerts.py).", "groups:", "  - name: mcpmeter", "    rules:"]
    for rule in rules():
        lines.append(f"      - alert: {rule['alert']}")
        lines.append(f"        expr: {_yaml_value(rule['expr'], '        ')}")
        lines.append(f"        for: {rule['for']}")
        for section in ("labels", "annotations"):
            lines.append(f"        {section}:")
            lines += [f"          {k}: {_yaml_value(v, '          ')}" for k, v in rule[section].items()]
    return "\n".join(lines) + "\n"


# ---- the same conditions, from a store ------------------------------------------------------------


def call_counts(store: Store, project_id: int, start: int, end: int) -> dict[tuple[str, str], list[int]]:
    """(server, tool) -> [calls, errors] in [start, end): whole hours from the rollups, the edges raw."""
    out: dict[tuple[str, str], list[int]] = {}

    def add(rows: Iterable[tuple[Any, ...]]) -> None:
        for server, tool, calls, errors in rows:
            counts = out.setdefault((server, tool or ""), [0, 0])
            counts[0] += int(calls)
            counts[1] += int(errors or 0)

    first, last = -(-start // HOUR_MS) * HOUR_MS, end - end % HOUR_MS
    if first >= last:
        add(store.call_counts(EventFilter(project_id, start, end)))
        return out
    add(store.call_counts(EventFilter(project_id, start, first)))
    add((c[2], c[3], c[5], c[6]) for c in store.tool_cells(EventFilter(project_id, first, last), "hour"))
    add(store.call_counts(EventFilter(project_id, last, end)))
    return out


def evaluate(store: Store, project_id: int, now_ms: int | None = None) -> list[dict[str, Any]]:
    """The usage alerts firing now for one project (what the rules would fire; ``for`` aside)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    firing: list[dict[str, Any]] = []
    windows: dict[str, dict[tuple[str, str], list[int]]] = {}

    def counts(window: str) -> dict[tuple[str, str], list[int]]:
        if window not in windows:
            windows[window] = call_counts(store, project_id, now_ms - ms(window), now_ms)
        return windows[window]

    for b in BURN_RATES:
        long, short = counts(b.long), counts(b.short)
        for key, (calls, errors) in sorted(long.items()):
            s_calls, s_errors = short.get(key, (0, 0))
            if calls >= MIN_CALLS and errors / calls > b.threshold and s_calls and s_errors / s_calls > b.threshold:
                server, tool = key
                firing.append({"alert": b.alert, "severity": b.severity, "server": server, "tool": tool,
                               "summary": f"{tool} on {server} burns its error budget {b.factor:g}x too fast",
                               "error_rate": {b.long: round(errors / calls, 4), b.short: round(s_errors / s_calls, 4)},
                               "threshold": b.threshold})
    baseline, recent = _by_server(counts(SILENT_BASELINE)), _by_server(counts(SILENT_AFTER))
    for server in sorted(s for s, n in baseline.items() if n and not recent.get(s)):
        firing.append({"alert": "MCPServerSilent", "severity": "ticket", "server": server,
                       "summary": f"{server} has gone silent",
                       "detail": f"{baseline[server]} calls in the last {SILENT_BASELINE}, none in the last {SILENT_AFTER}"})
    return firing


def _by_server(counts: dict[tuple[str, str], list[int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for (server, _), (calls, _) in counts.items():
        out[server] = out.get(server, 0) + calls
    return out


class RecentRequests:
    """Ingest requests this collector answered, per minute, over the last hour: the ingest
    alert's numbers on the dashboard (``mcpmeter_http_requests_total`` is the same count)."""

    def __init__(self, minutes: int = 60) -> None:
        self._minutes: deque[list[int]] = deque(maxlen=minutes)  # [minute, answered, refused]
        self._lock = threading.Lock()
        self._routes = frozenset(INGEST_ROUTES)

    def add(self, route: str, status: int, now: float | None = None) -> None:
        if route not in self._routes:
            return
        minute = int((time.time() if now is None else now) // 60)
        with self._lock:
            if not self._minutes or self._minutes[-1][0] != minute:
                self._minutes.append([minute, 0, 0])
            self._minutes[-1][1] += 1
            self._minutes[-1][2] += 0 if 200 <= status < 300 else 1

    def window(self, window: str = REFUSED_WINDOW, now: float | None = None) -> tuple[int, int]:
        """(answered, refused) over the last ``window``."""
        since = int((time.time() if now is None else now) // 60) - ms(window) // 60_000
        with self._lock:
            rows = [m for m in self._minutes if m[0] > since]
        return sum(m[1] for m in rows), sum(m[2] for m in rows)

    def firing(self, now: float | None = None) -> list[dict[str, Any]]:
        answered, refused = self.window(now=now)
        if not answered or refused / answered <= REFUSED_SHARE:
            return []
        return [{"alert": "MCPMeterIngestRefused", "severity": "page", "summary": "this collector refuses ingest requests",
                 "detail": f"{refused} of {answered} ingest requests answered with an error in the last {REFUSED_WINDOW}",
                 "refused_share": round(refused / answered, 4)}]


def describe() -> dict[str, Any]:
    """The definitions, for the dashboard and the API (what each alert means)."""
    return {"slo": SLO, "min_calls": MIN_CALLS,
            "burn_rates": [{"alert": b.alert, "severity": b.severity, "long": b.long, "short": b.short,
                            "factor": b.factor, "threshold": b.threshold} for b in BURN_RATES],
            "silent": {"after": SILENT_AFTER, "baseline": SILENT_BASELINE},
            "ingest_refused": {"share": REFUSED_SHARE, "window": REFUSED_WINDOW}}


if __name__ == "__main__":
    import sys

    sys.stdout.write(rules_yaml())

"""The MCP gateway metrics-service's Prometheus series, from what this collector stored.

The gateway's metrics-service labels every series with ``service`` and ``metric_type`` plus the
metric's dimensions; its "MCP Analytics Comprehensive" Grafana dashboard queries
``mcp_tool_executions_total`` by ``method``, ``server_name``, ``tool_name``, ``client_name`` and
``success`` (every MCP request the gateway proxied is a "tool execution": ``initialize``,
``tools/list`` and ``tools/call`` alike), ``mcp_auth_requests_total`` by ``server``, ``method`` and
``success``, and the duration histograms by ``server_name`` and ``method``.

With ``MCPMETER_METRICS_LABELS=gateway`` (``compat``) this module renders the MCP series under
those names and labels, from every stored event: events that came through ``POST /metrics``
carry their ``service`` and ``metric_type`` as attributes; events from mcpmeter's own SDK,
proxy or OTLP receiver get ``service="mcpmeter"`` and the type the gateway would have given
them. Always (both label sets) it adds the series the gateway's ``health_check``,
``registry_operation`` and ``protocol_latency`` metrics feed. Label values come from clients,
so they stay bounded: (server, tool) pairs share the project's series cap
(``MCPMETER_METRICS_MAX_SERIES``), and client names, services, methods, endpoints, status
codes, operations, resource types and flow steps are capped at ``SMALL_CAP`` values each
(then ``_OTHER``). User hashes, session keys, paths and queries never become labels.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ...events import Row
from ...protocol import GATEWAY_KINDS, METHOD_ATTRIBUTE, METHOD_FOR_KIND
from ..commits import GATEWAY_BOUNDS_MS
from .aggregate import OTHER_VALUE, SMALL_CAP, _attributes, _Bounded, new_hist, observe

if TYPE_CHECKING:
    from .aggregate import ProjectMetrics
    from .prometheus import Family

OWN_SERVICE = "mcpmeter"  # the `service` of events that did not come through the gateway API

_COUNT_NAMES = ("executions", "discovery", "auth", "health", "registry")
_HIST_NAMES = ("execution_duration", "discovery_duration", "auth_duration", "protocol", "health_duration",
               "registry_duration")


class GatewaySeries:
    """One project's gateway-named series (keys are label values in family label order)."""

    def __init__(self, compat: bool) -> None:
        self.compat = compat
        self.bounded = {name: _Bounded(SMALL_CAP, OTHER_VALUE) for name in (
            "service", "client", "method", "endpoint", "status", "operation", "resource", "step", "auth_method")}
        self.executions: dict[tuple, int] = {}  # service, metric_type, method, server_name, tool_name, client_name, success
        self.execution_duration: dict[tuple, list] = {}  # service, metric_type, method, server_name, tool_name
        self.discovery: dict[tuple, int] = {}  # service, metric_type, server_name, success
        self.discovery_duration: dict[tuple, list] = {}  # service, metric_type, server_name
        self.auth: dict[tuple, int] = {}  # service, metric_type, method, server, success
        self.auth_duration: dict[tuple, list] = {}  # service, metric_type, method, server
        self.protocol: dict[tuple, list] = {}  # service, metric_type, flow_step, server_name
        self.health: dict[tuple, int] = {}  # service, metric_type, server_name, endpoint, status_code, healthy
        self.health_duration: dict[tuple, list] = {}  # service, metric_type, server_name, endpoint
        self.registry: dict[tuple, int] = {}  # service, metric_type, operation, resource_type, success
        self.registry_duration: dict[tuple, list] = {}  # service, metric_type, operation, resource_type

    def wants(self, kind: str) -> bool:
        """Whether rows of ``kind`` are added here (all of them with the gateway's labels)."""
        return self.compat or kind in GATEWAY_KINDS

    def add(self, rows: Iterable[Row], p: ProjectMetrics) -> None:
        for row in rows:
            self._add(row, p)

    def _add(self, row: Row, p: ProjectMetrics) -> None:
        kind = row.kind
        if kind == "sdk.dropped":
            return
        attrs = _attributes(row.attributes) if row.attributes else {}
        b = self.bounded
        service = b["service"](str(attrs.get("service") or OWN_SERVICE)[:64])
        metric_type = attrs.get("metric_type")
        success = "false" if row.ok == 0 else "true"
        ms = row.duration_ms
        key: tuple
        if kind == "auth":
            method = b["auth_method"](str(attrs.get("method") or attrs.get("auth.method") or row.tool or "unknown")[:64])
            key = (service, "auth_request", method, p.server_label(row.server, 0))
            self._count(self.auth, key, success, ms, self.auth_duration)
        elif kind == "protocol_latency":
            step = b["step"](str(attrs.get("flow_step") or "unknown")[:64])
            if ms is not None and not self.compat:
                p.protocol_step(row.server, step, ms)  # mcpmeter's labels: (server, step)
            elif ms is not None:
                self.observe(self.protocol, (service, "protocol_latency", step, p.server_label(row.server, 0)), ms)
        elif kind == "health_check":
            endpoint = b["endpoint"](str(attrs.get("endpoint") or "")[:96])
            status = b["status"](str(attrs.get("status_code") or "")[:16])
            key = (service, "health_check", p.server_label(row.server, 0), endpoint)
            self.health[(*key, status, success)] = self.health.get((*key, status, success), 0) + 1
            if ms is not None:
                self.observe(self.health_duration, key, ms)
        elif kind == "registry_operation":
            key = (service, "registry_operation", b["operation"](str(attrs.get("operation") or "unknown")[:64]),
                   b["resource"](str(attrs.get("resource_type") or "unknown")[:64]))
            self._count(self.registry, key, success, ms, self.registry_duration)
        elif kind == "list_tools" and metric_type == "tool_discovery":  # the registry's tool search
            key = (service, "tool_discovery", p.server_label(row.server, 0))
            self._count(self.discovery, key, success, ms, self.discovery_duration)
        else:
            raw_method = attrs.get(METHOD_ATTRIBUTE) or METHOD_FOR_KIND.get(kind)
            if raw_method is None:
                if "/" not in kind:
                    return  # not an MCP request (a custom kind)
                raw_method = OTHER_VALUE
            method = b["method"](str(raw_method)[:64])
            server, tool = p.labels(row.server, row.tool or "", 0)
            client = b["client"](str(row.client_name or "unknown")[:96])
            key = (service, metric_type or "tool_execution", method, server, tool or method)
            self._count(self.executions, (*key, client), success, ms, self.execution_duration, key)
            if kind == "list_tools" and metric_type is None:  # mcpmeter's own tools/list is also discovery
                self._count(self.discovery, (service, "tool_discovery", server), success, ms, self.discovery_duration)

    def _count(self, counts: dict, key: tuple, success: str, ms: float | None, hists: dict,
               hist_key: tuple | None = None) -> None:
        if (*key, "true") not in counts:  # both outcomes exist from the first one, as mcpmeter's series do
            counts[(*key, "true")] = 0
            counts[(*key, "false")] = 0
        counts[(*key, success)] += 1
        if ms is not None:
            self.observe(hists, hist_key or key, ms)

    @staticmethod
    def observe(hists: dict, key: tuple, ms: float) -> None:
        hist = hists.get(key)
        if hist is None:
            hist = hists[key] = new_hist(GATEWAY_BOUNDS_MS)
        observe(hist, GATEWAY_BOUNDS_MS, ms)

    def snapshot(self) -> GatewaySeries:
        copy = GatewaySeries.__new__(GatewaySeries)
        copy.compat, copy.bounded = self.compat, self.bounded
        for name in _COUNT_NAMES:
            setattr(copy, name, dict(getattr(self, name)))
        for name in _HIST_NAMES:
            setattr(copy, name, {k: v[:] for k, v in getattr(self, name).items()})
        return copy

    # ---- families --------------------------------------------------------------------------

    def mcp_families(self, p: ProjectMetrics, const: tuple) -> list[Family]:
        """The MCP series under the gateway's names and labels (``MCPMETER_METRICS_LABELS=gateway``)."""
        from .prometheus import Family

        protocol = {k: v[:] for k, v in self.protocol.items()}
        for (server, step), hist in p.protocol.items():  # mcpmeter's own session timings
            key = (OWN_SERVICE, "protocol_latency", step, server)
            _add_hist(protocol.setdefault(key, new_hist(GATEWAY_BOUNDS_MS)), hist)
        return [
            Family("mcp_tool_executions", "MCP requests (the gateway's tool executions: every method) stored by this "
                   "collector process.", "counter",
                   ("service", "metric_type", "method", "server_name", "tool_name", "client_name", "success"),
                   self.executions, const=const),
            Family("mcp_tool_execution_duration_seconds", "Duration of MCP requests.", "histogram",
                   ("service", "metric_type", "method", "server_name", "tool_name"), self.execution_duration,
                   GATEWAY_BOUNDS_MS, const),
            Family("mcp_tool_discovery", "Tool discovery requests.", "counter",
                   ("service", "metric_type", "server_name", "success"), self.discovery, const=const),
            Family("mcp_tool_discovery_duration_seconds", "Duration of tool discovery requests.", "histogram",
                   ("service", "metric_type", "server_name"), self.discovery_duration, GATEWAY_BOUNDS_MS, const),
            Family("mcp_auth_requests", "Authentication requests.", "counter",
                   ("service", "metric_type", "method", "server", "success"), self.auth, const=const),
            Family("mcp_auth_request_duration_seconds", "Duration of authentication requests.", "histogram",
                   ("service", "metric_type", "method", "server"), self.auth_duration, GATEWAY_BOUNDS_MS, const),
            Family("mcp_protocol_latency_seconds", "Latency between MCP protocol steps (flow_step).", "histogram",
                   ("service", "metric_type", "flow_step", "server_name"), protocol, GATEWAY_BOUNDS_MS, const),
            *self.extra_families(const),
        ]

    def extra_families(self, const: tuple) -> list[Family]:
        """Health checks and registry operations: with the gateway's labels, or mcpmeter's
        (``server`` for ``server_name``, no ``service``/``metric_type``)."""
        from .prometheus import Family

        if self.compat:
            health, health_d, registry, registry_d = self.health, self.health_duration, self.registry, self.registry_duration
            h_labels: tuple[str, ...] = ("service", "metric_type", "server_name", "endpoint")
            r_labels: tuple[str, ...] = ("service", "metric_type", "operation", "resource_type")
        else:
            health, health_d = _drop_two(self.health), _drop_two(self.health_duration)
            registry, registry_d = _drop_two(self.registry), _drop_two(self.registry_duration)
            h_labels, r_labels = ("server", "endpoint"), ("operation", "resource_type")
        return [
            Family("mcp_health_checks", "Health checks reported by the gateway (health_check metrics).", "counter",
                   (*h_labels, "status_code", "healthy"), health, const=const),
            Family("mcp_health_check_duration_seconds", "Duration of health checks.", "histogram", h_labels, health_d,
                   GATEWAY_BOUNDS_MS, const),
            Family("mcp_registry_operations", "Registry operations reported by the gateway (registry_operation "
                   "metrics).", "counter", (*r_labels, "success"), registry, const=const),
            Family("mcp_registry_operation_duration_seconds", "Duration of registry operations.", "histogram", r_labels,
                   registry_d, GATEWAY_BOUNDS_MS, const),
        ]


def _add_hist(target: list, source: list) -> None:
    for i, v in enumerate(source):
        target[i] += v


def _drop_two(series: dict[tuple, Any]) -> dict[tuple, Any]:
    """The series without their ``service`` and ``metric_type`` labels (values added up)."""
    out: dict[tuple, Any] = {}
    for key, value in series.items():
        short = key[2:]
        if isinstance(value, list):
            _add_hist(out.setdefault(short, [0.0, 0] + [0] * (len(value) - 2)), value)
        else:
            out[short] = out.get(short, 0) + value
    return out


__all__ = ["OWN_SERVICE", "GatewaySeries"]

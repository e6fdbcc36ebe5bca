"""``POST /metrics``: the MCP gateway's metrics-service API, unchanged, stored as mcpmeter data.

The gateway's registry, auth server and nginx emitter (``MetricsClient`` in
``agentic-community/mcp-gateway-registry``) send ``{"service", "version", "instance_id",
"metrics": [{"type", "timestamp", "value", "duration_ms", "dimensions", "metadata"}]}`` with
the key in ``X-API-Key``. This module answers as that service does - a malformed body is a 422
``{"detail": [{"type", "loc", "msg", "input"}]}`` (FastAPI's shape), a body that breaks the
service's rules is a 200 with every metric ``rejected`` and the reasons in ``errors``, a key
problem is ``{"detail": ...}`` with 401/403/429 - and stores each metric as what mcpmeter already
answers questions from:

==================== ===================================================================
``tool_execution``   an event of the kind of its ``method`` (``tools/call`` -> ``tool_call``,
                     ``tools/list`` -> ``list_tools``, ``initialize`` -> ``initialize``, ...)
``tool_discovery``   a ``list_tools`` event (the query and result counts as attributes)
``auth_request``     an ``auth`` event (``method`` attribute, server from ``server``)
``protocol_latency`` a ``protocol_latency`` event (``value`` seconds -> ``duration_ms``; ``flow_step``)
``health_check``     a ``health_check`` event (``healthy`` -> ok; endpoint, status code)
``registry_operation`` a ``registry_operation`` event (operation, resource type; ok)
``custom``           a measurement named after its ``metric_name`` dimension
==================== ===================================================================

Every event keeps ``service``, ``metric_type`` and the dimensions and metadata it does not map
to a field as attributes (``metadata.`` prefixed), so the gateway's Prometheus labels can be
rebuilt (``exporters/gateway_series.py``). Events go through the same validation, name caps and
writer as ``/v1/events``. A metric with a timestamp gets an id derived from its content, so a
client's retry is stored once.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ...events import Event, Rejection, decode_batch, event_id, fit_attributes
from ...exceptions import AuthError, BatchError, BodyTooLarge, ModelErrors, Overloaded, RateLimited, StorageError
from ...ingest import rows_for
from ...measurements import measurement_rows
from ...protocol import (
    AUTH,
    HEALTH_CHECK,
    LIST_TOOLS,
    METHOD_ATTRIBUTE,
    PROTOCOL_LATENCY,
    REGISTRY_OPERATION,
    TOOL_CALL,
    TOOLS_CALL,
    kind_for_method,
)
from .ingest import read_body

METRIC_TYPES = ("auth_request", "tool_discovery", "tool_execution", "registry_operation", "health_check",
                "protocol_latency", "custom")
_MAX_METRICS = 100

# ---- the request, checked as the service's pydantic models check it (FastAPI's 422) ---------

_ENUM = ", ".join(f"'{t}'" for t in METRIC_TYPES[:-1]) + f" or '{METRIC_TYPES[-1]}'"


def _err(kind: str, loc: list, msg: str, value: Any, **ctx: Any) -> dict[str, Any]:
    out = {"type": kind, "loc": ["body", *loc], "msg": msg, "input": value}
    if ctx:
        out["ctx"] = ctx
    return out


_ABSENT = object()


def _field(obj: dict, name: str, loc: list, errors: list, required: bool) -> Any:
    """The field's value; ``_ABSENT`` when it is missing (an error if required) or an optional null."""
    if name not in obj:
        if required:
            errors.append(_err("missing", [*loc, name], "Field required", obj))
        return _ABSENT
    value = obj[name]
    return _ABSENT if value is None and not required else value


def _text(obj: dict, name: str, loc: list, errors: list, max_length: int, required: bool = False) -> str | None:
    value = _field(obj, name, loc, errors, required)
    if value is _ABSENT:
        return None
    if not isinstance(value, str):
        errors.append(_err("string_type", [*loc, name], "Input should be a valid string", value))
        return None
    if len(value) > max_length:
        errors.append(_err("string_too_long", [*loc, name], f"String should have at most {max_length} characters",
                           value, max_length=max_length))
    return value


def _number(obj: dict, name: str, loc: list, errors: list, required: bool) -> float | None:
    value = _field(obj, name, loc, errors, required)
    if value is _ABSENT:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        errors.append(_err("float_type", [*loc, name], "Input should be a valid number", value))
        return None
    try:
        return float(value)
    except ValueError:
        errors.append(_err("float_parsing", [*loc, name], "Input should be a valid number, unable to parse string as a number", value))
        return None


def _timestamp(value: Any, loc: list, errors: list) -> datetime | None:
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise ValueError("input is a boolean")
        if isinstance(value, (int, float)):
            seconds = value / 1000 if abs(value) > 2e10 else value  # pydantic: milliseconds above 2e10
            return datetime.fromtimestamp(seconds, UTC)
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)  # naive = UTC, as utcnow() sends
        raise ValueError("input is not a date and time")
    except (ValueError, OverflowError, OSError) as exc:
        errors.append(_err("datetime_parsing", loc, f"Input should be a valid datetime, {exc}", value))
        return None


def parse(body: bytes) -> dict[str, Any]:
    """The request as the service's ``MetricRequest`` reads it, or ``Invalid``."""
    try:
        raw = json.loads(body) if body.strip() else None
    except (ValueError, UnicodeDecodeError) as exc:
        pos = getattr(exc, "pos", 0)
        raise ModelErrors([{"type": "json_invalid", "loc": ["body", pos], "msg": "JSON decode error", "input": {},
                        "ctx": {"error": getattr(exc, "msg", str(exc))}}]) from None
    if raw is None:
        raise ModelErrors([_err("missing", [], "Field required", None)])
    if not isinstance(raw, dict):
        raise ModelErrors([_err("model_attributes_type", [], "Input should be a valid dictionary or object to extract fields from", raw)])
    errors: list[dict[str, Any]] = []
    parsed: list[dict[str, Any]] = []
    request: dict[str, Any] = {"service": _text(raw, "service", [], errors, 50, required=True),
                               "version": _text(raw, "version", [], errors, 20),
                               "instance_id": _text(raw, "instance_id", [], errors, 50), "metrics": parsed}
    metrics = raw.get("metrics")
    if "metrics" not in raw:
        errors.append(_err("missing", ["metrics"], "Field required", raw))
    elif not isinstance(metrics, list):
        errors.append(_err("list_type", ["metrics"], "Input should be a valid list", metrics))
    else:
        for i, m in enumerate(metrics):
            loc = ["metrics", i]
            if not isinstance(m, dict):
                errors.append(_err("model_attributes_type", loc, "Input should be a valid dictionary or object to extract fields from", m))
                continue
            metric: dict[str, Any] = {"type": m.get("type")}
            if "type" not in m:
                errors.append(_err("missing", [*loc, "type"], "Field required", m))
            elif m["type"] not in METRIC_TYPES:
                errors.append(_err("enum", [*loc, "type"], f"Input should be {_ENUM}", m["type"], expected=_ENUM))
            metric["timestamp"] = _timestamp(m["timestamp"], [*loc, "timestamp"], errors) if "timestamp" in m else "now"
            metric["timestamp_given"] = m.get("timestamp") is not None
            metric["value"] = _number(m, "value", loc, errors, required=True)
            metric["duration_ms"] = _number(m, "duration_ms", loc, errors, required=False)
            for name in ("dimensions", "metadata"):
                value = m.get(name, {})
                if not isinstance(value, dict):
                    errors.append(_err("dict_type", [*loc, name], "Input should be a valid dictionary", value))
                    value = {}
                metric[name] = value
            parsed.append(metric)
    if errors:
        raise ModelErrors(errors)
    return request


# ---- the service's own rules (app/core/validator.py): reported in a 200, nothing stored -----

_SERVICE = re.compile(r"^[a-zA-Z0-9_-]+$")
_INSTANCE = re.compile(r"^[a-zA-Z0-9_.-]+$")
_DIMENSION_KEY = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def rule_errors(request: dict[str, Any], now: float | None = None) -> list[str]:
    """``field: message`` for every rule of the service the request breaks (empty: valid)."""
    now = time.time() if now is None else now
    out: list[str] = []
    service, instance = request["service"], request["instance_id"]
    if not service:
        out.append("service: Service name is required")
    elif not _SERVICE.match(service):
        out.append("service: Service name must contain only alphanumeric characters, underscores, and hyphens")
    if instance and not _INSTANCE.match(instance):
        out.append("instance_id: Instance ID must contain only alphanumeric characters, underscores, dots, and hyphens")
    metrics = request["metrics"]
    if not metrics:
        out.append("metrics: At least one metric is required")
    elif len(metrics) > _MAX_METRICS:
        out.append(f"metrics: Too many metrics in request: {len(metrics)}, max {_MAX_METRICS}")
    else:
        for i, m in enumerate(metrics):
            out += _metric_errors(m, f"metrics[{i}]", now)
    return out


def _metric_errors(m: dict[str, Any], at: str, now: float) -> list[str]:
    out = []
    ts = m["timestamp"]
    if ts is None:
        out.append(f"{at}.timestamp: Timestamp must be datetime object, got NoneType")
    elif ts != "now" and ts.timestamp() > now + 300:
        out.append(f"{at}.timestamp: Timestamp is too far in the future: {ts.isoformat()}")
    value = m["value"]
    if not -1e12 <= value <= 1e12:
        out.append(f"{at}.value: Metric value out of range: {value}, must be between -1000000000000.0 and 1000000000000.0")
    if math.isnan(value):
        out.append(f"{at}.value: Metric value cannot be NaN")
    duration = m["duration_ms"]
    if duration is not None:
        if duration < 0:
            out.append(f"{at}.duration_ms: Duration cannot be negative: {duration}")
        if duration > 86_400_000:
            out.append(f"{at}.duration_ms: Duration too large: {duration}ms, max 86400000.0ms")
    dims, meta = m["dimensions"], m["metadata"]
    if len(dims) > 20:
        out.append(f"{at}.dimensions: Too many dimensions: {len(dims)}, max 20")
    for key, v in dims.items():
        where = f"{at}.dimensions.{key}"
        if len(key) > 50:
            out.append(f"{where}: Dimension key too long: {len(key)} chars, max 50")
        elif not _DIMENSION_KEY.match(key):
            out.append(f"{where}: Dimension key must start with letter/underscore and contain only alphanumeric/underscore characters")
        if v is not None and len(str(v)) > 200:
            out.append(f"{where}: Dimension value too long: {len(str(v))} chars, max 200")
    if len(meta) > 30:
        out.append(f"{at}.metadata: Too many metadata fields: {len(meta)}, max 30")
    for key, v in meta.items():
        where = f"{at}.metadata.{key}"
        if len(key) > 50:
            out.append(f"{where}: Metadata key too long: {len(key)} chars, max 50")
        text = json.dumps(v) if isinstance(v, (dict, list)) else str(v)
        if v is not None and len(text) > 1000:
            out.append(f"{where}: Metadata value too long: {len(text)} chars, max 1000")
    return out


# ---- metrics -> events and measurements ---------------------------------------------------


def _dim_text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _ok(value: Any) -> bool | None:
    """A ``success``/``healthy`` dimension: a bool, or its text as Python or Lua writes it."""
    if isinstance(value, bool):
        return value
    text = _dim_text(value)
    if text is None:
        return None
    return text.strip().lower() in ("true", "1", "yes")


def _content_id(service: str, instance: str | None, metric: dict[str, Any], nth: int) -> str:
    canon = json.dumps([service, instance, metric["type"], metric["timestamp"].isoformat(), metric["value"],
                        metric["duration_ms"], metric["dimensions"], metric["metadata"], nth],
                       sort_keys=True, default=str)
    return "gw-" + hashlib.sha256(canon.encode()).hexdigest()[:40]


def to_event(request: dict[str, Any], metric: dict[str, Any], now_ms: int, nth: int = 0) -> dict[str, Any]:
    """The mcpmeter event for one (non-custom) metric; ``ValueError`` when it cannot be one."""
    service, kind_of = request["service"], metric["type"]
    dims = dict(metric["dimensions"])
    meta = metric["metadata"]
    ts = now_ms if metric["timestamp"] == "now" else int(metric["timestamp"].timestamp() * 1000)
    mid = _content_id(service, request["instance_id"], metric, nth) if metric["timestamp_given"] else event_id(ts)

    def take(*names: str) -> str | None:
        found = None
        for name in names:
            value = _dim_text(dims.pop(name, None))
            found = found or value
        return found

    event: dict[str, Any] = {"id": mid, "ts": ts, "duration_ms": metric["duration_ms"]}
    method = None
    if kind_of == "tool_execution":
        method = take("method") or TOOLS_CALL
        kind = kind_for_method(method)
        if kind is None:
            raise ValueError(f"dimensions.method {method[:60]!r} is not an MCP method")
        event["kind"] = kind
        event["server"] = take("server_name", "server") or (_dim_text(dims.get("server_path")) or "").strip("/") or service
        tool = take("tool_name")
        if kind == TOOL_CALL:
            if tool is None:
                raise ValueError("dimensions.tool_name is required for a tool execution")
            event["tool"] = tool
        event["ok"] = _ok(dims.pop("success", None))
        event["client_name"], event["client_version"] = take("client_name"), take("client_version")
    elif kind_of == "tool_discovery":
        event["kind"] = LIST_TOOLS
        event["server"] = take("server_name", "server") or service
        event["ok"] = _ok(dims.pop("success", None))
    elif kind_of == "auth_request":
        event["kind"] = AUTH
        event["server"] = take("server", "server_name") or service
        event["ok"] = _ok(dims.pop("success", None))
    elif kind_of == PROTOCOL_LATENCY:
        event["kind"] = PROTOCOL_LATENCY
        event["server"] = take("server_name", "server") or service
        event["duration_ms"] = metric["value"] * 1000  # the value is the latency in seconds
    elif kind_of == HEALTH_CHECK:
        event["kind"] = HEALTH_CHECK
        event["server"] = take("server_name", "server") or service
        event["ok"] = _ok(dims.pop("healthy", None))
    else:  # registry_operation
        event["kind"] = REGISTRY_OPERATION
        event["server"] = take("server_name", "server") or service
        event["ok"] = _ok(dims.pop("success", None))
    user = take("user_hash", "user_id")
    if user:
        event["user"] = user
    if event.get("ok") is False:
        event["error_type"] = _dim_text(meta.get("error_code")) or "error"
    elif kind_of == "tool_execution" and event["ok"] is None and event["kind"] == TOOL_CALL:
        event["ok"] = True  # the gateway counts a call without `success` as success=""; mcpmeter needs an outcome
    attributes: dict[str, Any] = {"service": service, "metric_type": kind_of}
    if method is not None:
        attributes[METHOD_ATTRIBUTE] = method
    if metric["value"] != 1.0 and kind_of != PROTOCOL_LATENCY:
        attributes["value"] = metric["value"]
    for key, value in dims.items():
        attributes[key] = value
    for key, value in meta.items():
        if value is not None:
            attributes[f"metadata.{key}"] = value
    if request["instance_id"]:
        attributes["instance_id"] = request["instance_id"]
    event["attributes"] = fit_attributes(attributes)
    return {k: v for k, v in event.items() if v is not None}


def to_measurement(request: dict[str, Any], metric: dict[str, Any], nth: int) -> dict[str, Any]:
    """A ``custom`` metric as a measurement (``POST /v1/measurements``' shape)."""
    dims = dict(metric["dimensions"])
    name = _dim_text(dims.pop("metric_name", None)) or "custom"
    tags = {str(k)[:64]: (_dim_text(v) or "")[:200] for k, v in list(dims.items())[:15]}
    tags["service"] = request["service"]
    out: dict[str, Any] = {"name": name, "value": metric["value"], "type": "gauge", "tags": tags}
    if metric["timestamp_given"]:
        out["timestamp"] = metric["timestamp"].isoformat()
        out["id"] = _content_id(request["service"], request["instance_id"], metric, nth)
    return out


# ---- the endpoint ---------------------------------------------------------------------------


def _detail(status: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


_AUTH_DETAIL = {"missing_key": "API key required in X-API-Key header", "unknown_key": "Invalid API key",
                "revoked": "API key is inactive"}


async def post_metrics(request: Request) -> Response:
    collector = request.app.state.collector
    try:
        principal = collector.auth.authenticate(request, "ingest")
    except AuthError as exc:
        reason = getattr(exc, "reason", "")
        if reason in _AUTH_DETAIL:
            return _detail(exc.status, _AUTH_DETAIL[reason])
        # the service has no scopes: a key without `ingest` (403) is told so in both shapes
        return JSONResponse({"detail": str(exc), "error": str(exc), "hint": exc.hint}, status_code=exc.status)
    except RateLimited as exc:
        limit = collector.config.rate_limit_per_key
        return _detail(429, f"Rate limit exceeded. Limit: {limit} requests/minute",
                       {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": "0", "Retry-After": str(exc.retry_after)})
    project = principal.project
    try:
        body = await read_body(request, collector.config.max_body_bytes, principal)
        parsed = parse(body)
    except BodyTooLarge:
        return _detail(413, f"Request body larger than {collector.config.max_body_bytes} bytes")
    except BatchError as exc:
        return _detail(400, str(exc))
    except AuthError as exc:  # a signed key whose signature does not match
        return _detail(exc.status, str(exc))
    except ModelErrors as exc:
        return _detail(422, exc.detail)
    request_id = f"req_{secrets.token_hex(8)}"
    headers = _rate_headers(collector, principal)
    broken = rule_errors(parsed)
    if broken:
        collector.counters["rejected"] += len(parsed["metrics"])
        return _answer(0, len(parsed["metrics"]), broken, request_id, headers)
    errors: list[str] = []
    candidates: list[tuple[int, dict]] = []
    custom: list[dict] = []
    now_ms = int(time.time() * 1000)
    seen: dict[str, int] = {}
    for i, metric in enumerate(parsed["metrics"]):
        key = json.dumps(metric, sort_keys=True, default=str)
        nth = seen[key] = seen.get(key, -1) + 1  # identical metrics in one request are each counted
        try:
            if metric["type"] == "custom":
                custom.append(to_measurement(parsed, metric, nth))
            else:
                candidates.append((i, to_event(parsed, metric, now_ms, nth)))
        except ValueError as exc:
            errors.append(f"metrics[{i}]: {exc}")
    names = collector.names
    if not names.loaded(project.id):
        await run_in_threadpool(names.load, project.id)
    events: list[Event] = []
    rejected: list[Rejection] = []
    if candidates:
        events, rejected = decode_batch(msgspec.json.encode([e for _, e in candidates]), collector.config.limits,
                                        admit=principal.admitting(names.admitter(project.id)))
        errors += [f"metrics[{candidates[r.index][0]}]: {r.error}" for r in rejected]
    measurement_rows_ = []
    if custom and (refused := principal.refused_server(parsed["service"])) is not None:  # a key bound to servers
        errors += [f"metrics[{i}]: {refused}" for i, m in enumerate(parsed["metrics"]) if m["type"] == "custom"]
        custom = []
    if custom:
        try:
            measurement_rows_ = measurement_rows(msgspec.json.encode({"server": parsed["service"], "metrics": custom}),
                                                 collector.config.limits)
        except BatchError as exc:
            errors.append(f"custom metrics: {exc}")
            custom = []
    try:
        if events:
            await collector.writer.submit(project.id, rows_for(project, events))
        if measurement_rows_:
            await run_in_threadpool(collector.store.ingest_measurements, project.id, measurement_rows_)
    except Overloaded as exc:
        collector.counters["requests_failed"] += 1
        return _detail(503, f"the collector is overloaded ({exc}); retry later", {"Retry-After": "2"})
    except StorageError:
        collector.counters["requests_failed"] += 1
        return _detail(503, "the store is unavailable; retry later", {"Retry-After": "5"})
    accepted = len(events) + len(custom)
    collector.counters["accepted"] += len(events)
    collector.counters["rejected"] += len(parsed["metrics"]) - accepted
    return _answer(accepted, len(parsed["metrics"]) - accepted, errors, request_id, headers)


def _rate_headers(collector: Any, principal: Any) -> dict[str, str]:
    limits = collector.auth.limits
    if limits is None or limits.per_key is None or principal.key_id is None:
        return {}
    buckets = limits.per_key
    return {"X-RateLimit-Limit": str(buckets.per_minute), "X-RateLimit-Remaining": str(buckets.remaining(principal.key_id))}


def _answer(accepted: int, rejected: int, errors: list[str], request_id: str, headers: dict[str, str]) -> JSONResponse:
    return JSONResponse({"status": "success", "accepted": accepted, "rejected": rejected, "errors": errors,
                         "request_id": request_id}, headers=headers)


__all__ = ["METRIC_TYPES", "parse", "post_metrics", "rule_errors", "to_event", "to_measurement"]

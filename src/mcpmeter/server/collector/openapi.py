"""The OpenAPI 3.1 description of the collector's HTTP API, served at /openapi.json.

The event schema is generated from the same msgspec Struct that validates requests, so
the document cannot drift from what the collector actually accepts.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import msgspec

from ... import __version__
from ...analytics.questions import QUESTIONS
from ...events import KEY_FIELDS, MAX_KEY_BYTES, Event
from ...measurements import MeasurementBatch, ServerEvent

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Malformed request", 401: "Missing or unknown API key", 403: "Key lacks the scope",
            406: "The Accept header names no format the answer comes in", 413: "Body too large",
            415: "Unsupported content type", 422: "Every event was rejected",
            429: "Rate limit of the key, address or project reached; retry after Retry-After seconds",
            503: "Store unavailable or overloaded; retry after Retry-After"}
    return {str(c): _json(_ERROR, text[c]) for c in codes}


@lru_cache(maxsize=1)
def openapi_schema() -> dict[str, Any]:
    (event_ref, batch_ref, server_event_ref), components = msgspec.json.schema_components(
        [Event, MeasurementBatch, ServerEvent], ref_template="#/components/schemas/{name}")
    # What msgspec cannot say: a tool_call names its tool; ts lies in the collector's window.
    components["Event"]["if"] = {"properties": {"kind": {"const": "tool_call"}}, "required": ["kind"]}
    components["Event"]["then"] = {"required": ["tool"], "properties": {"tool": {"type": "string"}}}
    components["Event"]["properties"]["ts"]["description"] = (
        "When it happened: RFC 3339, or epoch milliseconds. Events older than MCPMETER_MAX_EVENT_AGE_DAYS or further "
        "in the future than MCPMETER_MAX_CLOCK_SKEW_SECONDS are rejected (listed in `rejected`; 422 when none is left).")
    for name in ("Event", "MeasurementBatch", "Measurement", "ServerEvent"):
        if name in components:
            _storable_texts(components[name])
    for field in KEY_FIELDS:  # a byte limit JSON Schema cannot state
        components["Event"]["properties"][field]["description"] = (
            f"Also at most {MAX_KEY_BYTES} bytes of UTF-8 (it is part of an index key): 200 characters of up to 3 bytes.")
    components.update(_otlp_json_schemas())
    components.update({
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}, "hint": {"type": "string"}}},
        "Rejection": {"type": "object", "required": ["index", "error"], "properties": {
            "index": {"type": "integer"}, "id": {"type": ["string", "null"]}, "error": {"type": "string"}}},
        "IngestResult": {"type": "object", "required": ["accepted", "duplicates", "rejected"], "properties": {
            "accepted": {"type": "integer", "description": "Events stored by this request"},
            "duplicates": {"type": "integer", "description": "Events whose id was already stored (not counted again)"},
            "rejected": {"type": "array", "items": {"$ref": "#/components/schemas/Rejection"}},
            "error": {"type": "string"}}},
        "Summary": {"type": "object", "required": ["users", "calls", "errors", "tools"], "properties": {
            "project": {"type": "string"}, "from": {"type": "string"}, "to": {"type": "string"},
            "users": {"type": "integer"}, "calls": {"type": "integer"}, "errors": {"type": "integer"},
            "success_rate": {"type": ["number", "null"]},
            "latency_ms": {"type": "object"}, "calls_last_7d": {"type": "integer"},
            "new_users": {"type": "integer"}, "returning_users": {"type": "integer"},
            "tools": {"type": "array", "items": {"type": "object"}, "description": "The top tools, most called first"},
            "previous": {"type": "object"}, "change": {"type": "object"}}},
        "Answer": {"type": "object", "required": ["project", "from", "to", "grain"], "properties": {
            "project": {"type": "string"}, "from": {"type": "string"}, "to": {"type": "string"},
            "grain": {"type": "string", "enum": ["hour", "day"]}, "filters": {"type": "object"}},
            "description": "Every usage answer names the aligned window it covers; see docs/analytics.md"},
    })
    security: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]
    signature_params = [  # required by keys made with --require-signature (docs/security.md)
        {"name": "X-MCPMeter-Timestamp", "in": "header", "required": False, "schema": {"type": "string"},
         "description": "Signed requests: when the request was signed, in unix seconds (digits), within "
                        "MCPMETER_SIGNATURE_TOLERANCE_SECONDS of the collector's clock. Read only for keys that require signatures."},
        {"name": "X-MCPMeter-Signature", "in": "header", "required": False, "schema": {"type": "string"},
         "description": "Signed requests: v1=<hex HMAC-SHA256 of `timestamp.body` (the raw body as sent) under the key's signing secret>."},
    ]
    return {
        "openapi": "3.1.0",
        "info": {"title": "mcpmeter collector", "version": __version__,
                 "description": "Usage analytics for MCP servers: ingest tool-call events, ask usage questions."},
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
        "paths": {
            "/v1/events": {"post": {
                "summary": "Ingest a batch of events",
                "description": "A JSON array of events or {\"events\": [...]}, optionally gzip-encoded. "
                               "A 2xx answer means the accepted events are durably stored. Events are "
                               "idempotent by id: a retried event counts once.",
                "security": security,
                "parameters": signature_params,
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
                    {"type": "array", "items": event_ref},
                    {"type": "object", "required": ["events"], "additionalProperties": False,
                     "properties": {"events": {"type": "array", "items": event_ref}}},
                ]}}}},
                "responses": {"200": _json({"$ref": "#/components/schemas/IngestResult"}, "Stored (see rejected for events that were not)"),
                              **_errors(400, 401, 403, 413, 415, 422, 429, 503)},
            }},
            "/v1/traces": {"post": {
                "summary": "Ingest OTLP/HTTP spans of MCP servers as events",
                "description": "An OTLP ExportTraceServiceRequest, as protobuf (application/x-protobuf) or OTLP JSON "
                               "(application/json: hex ids, lowerCamelCase), optionally gzip-encoded. SERVER spans "
                               "with mcp.method.name (the OpenTelemetry MCP semantic conventions) become events "
                               "(tools/call: tool_call, tools/list: list_tools, initialize and server/discover: "
                               "initialize, other methods: their name); the event id comes from trace and span id, "
                               "so a retried export counts once. Other spans are ignored and counted in "
                               "X-MCPMeter-Ignored-Spans; MCP spans that are not valid events are reported in "
                               "partialSuccess.rejectedSpans. Errors are a google.rpc.Status for protobuf requests.",
                "security": security,
                "requestBody": {"required": True, "content": {
                    "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
                    "application/json": {"schema": {"$ref": "#/components/schemas/OtlpTraces"}},
                }},
                "responses": {
                    "200": {"description": "ExportTraceServiceResponse (partialSuccess when MCP spans were rejected)",
                            "headers": {name: {"schema": {"type": "integer"}, "description": text} for name, text in (
                                ("X-MCPMeter-Accepted", "Events stored by this request"),
                                ("X-MCPMeter-Duplicates", "Spans already stored (a retried export)"),
                                ("X-MCPMeter-Ignored-Spans", "Spans that are not MCP SERVER spans"))},
                            "content": {"application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
                                        "application/json": {"schema": {"type": "object", "properties": {
                                            "partialSuccess": {"type": "object", "properties": {
                                                "rejectedSpans": {"type": "string"}, "errorMessage": {"type": "string"}}}}}}}},
                    **_errors(400, 401, 403, 413, 415, 429, 503),
                },
            }},
            **_usage_paths(security),
            **_write_paths(security, signature_params, batch_ref, server_event_ref),
            "/health": {"get": {"summary": "Liveness", "responses": {"200": _json({"type": "object"}, "Alive")}}},
            "/ready": {"get": {"summary": "Readiness: store reachable and writer running",
                               "responses": {"200": _json({"type": "object"}, "Ready"), "503": _json({"type": "object"}, "Not ready")}}},
        },
    }


def _usage_paths(security: list) -> dict[str, Any]:
    """GET /v1/usage/*, one path per question of the registry, with the parameters it declares."""
    return {q.path: {"get": {
        "summary": q.summary, "security": security,
        "parameters": [{"name": p.name, "in": "query", "schema": p.schema, "description": p.description}
                       for p in q.http_parameters],
        "responses": {"200": _exports(_json({"$ref": f"#/components/schemas/{q.schema}"},
                                            "The answer, for the aligned window it names")),
                      **_errors(400, 401, 403, 406, 429)}}}
        for q in QUESTIONS.values()}


def _exports(response: dict[str, Any]) -> dict[str, Any]:
    """The answer's other media types (format=csv|markdown, or Accept: analytics/exports.py)."""
    text = {"schema": {"type": "string"}}
    return {**response, "content": {**response["content"], "text/csv": text, "text/markdown": text}}


def _write_paths(security: list, signature_params: list, batch: dict, event: dict) -> dict[str, Any]:
    result = _json({"$ref": "#/components/schemas/IngestResult"}, "Stored; duplicates were already there")
    return {
        "/v1/measurements": {"post": {
            "summary": "Custom counters, gauges and timers with tags, aggregated per day",
            "security": security, "parameters": signature_params,
            "requestBody": {"required": True, "content": {"application/json": {"schema": batch}}},
            "responses": {"200": result, **_errors(400, 401, 403, 413, 422, 429, 503)}}},
        "/v1/server-events": {"post": {
            "summary": "Server lifecycle events (restart, deploy, config change), shown as markers on charts",
            "security": security, "parameters": signature_params,
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
                {"type": "array", "items": event},
                {"type": "object", "required": ["events"], "additionalProperties": False,
                 "properties": {"events": {"type": "array", "items": event}}}]}}}},
            "responses": {"200": result, **_errors(400, 401, 403, 413, 422, 429, 503)}}},
    }


def _otlp_json_schemas() -> dict[str, Any]:
    """OTLP/JSON trace export, as far as the collector reads it (unknown fields are ignored)."""
    ref = "#/components/schemas/{}".format
    uint64 = {"anyOf": [{"type": "string", "pattern": "^[0-9]{1,19}$"}, {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}]}
    uint32 = {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}
    attributes = {"type": "array", "items": {"$ref": ref("OtlpKeyValue")}}
    schemas: dict[str, dict[str, Any]] = {
        "OtlpAnyValue": {"type": "object", "maxProperties": 1, "properties": {
            "stringValue": {"type": "string"}, "boolValue": {"type": "boolean"}, "doubleValue": {"type": "number"},
            "intValue": {"anyOf": [{"type": "string", "pattern": "^-?[0-9]{1,18}$"},
                                   {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}]}}},
        "OtlpKeyValue": {"type": "object", "properties": {"key": {"type": "string"}, "value": {"$ref": ref("OtlpAnyValue")}}},
        "OtlpSpan": {"type": "object", "properties": {
            "traceId": {"type": "string", "pattern": "^([0-9a-fA-F]{2})*$", "x-form": "a hex string"},
            "spanId": {"type": "string", "pattern": "^([0-9a-fA-F]{2})*$", "x-form": "a hex string"},
            "parentSpanId": {"type": "string", "pattern": "^([0-9a-fA-F]{2})*$", "x-form": "a hex string"}, "traceState": {"type": "string"},
            "name": {"type": "string"}, "kind": _enum("SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL", "SPAN_KIND_SERVER",
                                                      "SPAN_KIND_CLIENT", "SPAN_KIND_PRODUCER", "SPAN_KIND_CONSUMER"),
            "startTimeUnixNano": uint64, "endTimeUnixNano": uint64, "attributes": attributes,
            "droppedAttributesCount": uint32, "flags": uint32,
            "status": {"type": "object", "properties": {
                "message": {"type": "string"}, "code": _enum("STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR")}}}},
        "OtlpScopeSpans": {"type": "object", "properties": {
            "scope": {"type": "object", "properties": {"name": {"type": "string"}, "version": {"type": "string"}, "attributes": attributes}},
            "spans": {"type": "array", "items": {"$ref": ref("OtlpSpan")}}, "schemaUrl": {"type": "string"}}},
        "OtlpResourceSpans": {"type": "object", "properties": {
            "resource": {"type": "object", "properties": {"attributes": attributes, "droppedAttributesCount": uint32}},
            "scopeSpans": {"type": "array", "items": {"$ref": ref("OtlpScopeSpans")}}, "schemaUrl": {"type": "string"}}},
        "OtlpTraces": {"type": "object", "properties": {"resourceSpans": {"type": "array", "items": {"$ref": ref("OtlpResourceSpans")}}}},
    }
    for schema in schemas.values():
        _nullable_fields(schema)
    return schemas


_NO_NUL = "^[^\u0000]*$"


def _storable_texts(schema: Any) -> None:
    """What msgspec's schema cannot say about texts: no NUL character in any (events.text_problem)."""
    if isinstance(schema, dict):
        if schema.get("type") == "string" and "pattern" not in schema and "enum" not in schema:
            schema["pattern"] = _NO_NUL
        if schema.get("type") == "object" and "additionalProperties" in schema:
            schema.setdefault("propertyNames", {}).setdefault("pattern", _NO_NUL)
        for value in schema.values():
            _storable_texts(value)
    elif isinstance(schema, list):
        for item in schema:
            _storable_texts(item)


def _enum(*names: str) -> dict[str, Any]:
    """A protobuf enum in JSON: its name, or any int32 (proto3 enums are open)."""
    return {"anyOf": [{"type": "string", "enum": list(names)}, {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}]}


def _nullable_fields(schema: dict[str, Any]) -> None:
    """Protobuf's JSON mapping reads ``null`` as "not set" for every field (not for array items)."""
    for name, field in list(schema.get("properties", {}).items()):
        if field.get("type") == "object":
            _nullable_fields(field)
        schema["properties"][name] = {"anyOf": [field, {"type": "null"}]}


def _is_type(value: Any, kind: str) -> bool:
    if kind == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and value.is_integer())
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"string": str, "boolean": bool, "null": type(None), "array": list, "object": dict}[kind])


def schema_error(value: Any, schema: dict[str, Any], path: str = "$") -> str | None:
    """Where ``value`` breaks ``schema`` (the subset of JSON Schema the OTLP schemas above use), or None.

    The collector checks OTLP/JSON bodies with the very schemas it publishes, so the document
    and the handler cannot disagree."""
    if "$ref" in schema:
        return schema_error(value, _OTLP[schema["$ref"].rsplit("/", 1)[1]], path)
    if "anyOf" in schema:
        errors = [schema_error(value, option, path) for option in schema["anyOf"]]
        return None if any(e is None for e in errors) else errors[0]
    kind = schema.get("type")
    if kind is not None and not _is_type(value, kind):
        return f"expected {'an' if kind[0] in 'aeiou' else 'a'} {kind} at {path}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{path} must be one of {', '.join(map(str, schema['enum']))}"
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        return f"{path} {value[:40]!r} is not {schema.get('x-form', 'of the right form')}"
    if (isinstance(value, (int, float)) and not isinstance(value, bool)
            and (value < schema.get("minimum", value) or value > schema.get("maximum", value))):
        return f"{path} is out of range"
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            if (error := schema_error(item, schema["items"], f"{path}[{i}]")) is not None:
                return error
    if isinstance(value, dict):
        if len(value) > schema.get("maxProperties", len(value)):
            return f"{path} may have at most {schema['maxProperties']} field(s)"
        for name, sub in schema.get("properties", {}).items():
            if name in value and (error := schema_error(value[name], sub, f"{path}.{name}")) is not None:
                return error
    return None


_OTLP = _otlp_json_schemas()


def otlp_json_error(body: Any) -> str | None:
    """Why an OTLP/JSON body does not match the published schema, or None."""
    return schema_error(body, _OTLP["OtlpTraces"])

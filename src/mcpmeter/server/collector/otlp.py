"""POST /v1/traces: OTLP/HTTP spans from OpenTelemetry-instrumented MCP servers, as events.

Accepts ``application/x-protobuf`` (``ExportTraceServiceRequest``) and ``application/json``
(the OTLP JSON mapping: hex trace/span ids, lowerCamelCase, 64-bit integers as strings),
optionally gzip, with the same key (ingest scope) and body limits as /v1/events.

A span is an MCP span when it is a SERVER span with ``mcp.method.name`` (the
OpenTelemetry MCP semantic conventions, which the MCP Python SDK 2.x and FastMCP emit) for
a request (``notifications/*`` are not requests). Every other span is ignored and counted (``X-MCPMeter-Ignored-Spans``). An MCP span
becomes one event - ``tools/call`` a ``tool_call``, ``tools/list`` a ``list_tools``,
``initialize``/``server/discover`` an ``initialize``, anything else the method's name - and
goes through the same validation and writer as /v1/events. Its id is derived from the
trace and span ids, so an exporter's retry is counted once. MCP spans that cannot be
turned into a valid event are the OTLP answer's ``rejected_spans``.

Every event carries its outcome class (``mcp.outcome``: ``error.type`` ``tool_error`` is a
tool error, a JSON-RPC code a caller or server error by ``protocol.outcome``, an exception
type a server error). What spans cannot say (docs/opentelemetry.md, "What spans cannot
tell"): the tools a ``tools/list`` returned (no catalog), whether a ``tools/call`` answered
``input_required`` or with a task (each round is a call), a cancelled request, and the
client's name on the 2026-07-28 protocol (unless the span carries ``mcp.client.name``).
"""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import msgspec
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ...events import (
    MAX_ATTRIBUTE_VALUE,
    MAX_NAME,
    MAX_PROTOCOL_VERSION,
    MAX_SHORT_TEXT,
    MAX_TRANSPORT,
    MAX_USER,
    Rejection,
    decode_batch,
)
from ...exceptions import AuthError, BatchError, BodyTooLarge, OtlpError, Overloaded, StorageError, Unstorable
from ...ingest import rows_for
from ...protocol import (
    LIST_TOOLS,
    METHOD_ATTRIBUTE,
    OUTCOME_ATTRIBUTE,
    OUTCOME_OK,
    TOOL_CALL,
    TOOL_ERROR,
    TOOLS_CALL,
    error_type_for_code,
    kind_for_method,
    outcome,
)
from .ingest import read_body
from .openapi import otlp_json_error

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

_ID_FIELDS = ("traceId", "spanId", "parentSpanId")
_HEX = re.compile(r"^[0-9a-fA-F]*$")
_encode = msgspec.json.Encoder().encode

# Span attributes read (everything else is ignored).
_WANTED = frozenset({
    METHOD_ATTRIBUTE, "gen_ai.tool.name", "gen_ai.prompt.name", "error.type",
    "rpc.response.status_code", "mcp.session.id", "mcp.protocol.version", "network.transport",
    "network.protocol.name", "jsonrpc.request.id", "user.id", "enduser.id",
    "mcp.client.name", "mcp.client.version", "client.name", "client.version",
})


# ---- decoding ------------------------------------------------------------------------------


def parse_request(body: bytes, content_type: str) -> ExportTraceServiceRequest:
    message = ExportTraceServiceRequest()
    if content_type == PROTOBUF:
        try:
            message.ParseFromString(body)
        except (DecodeError, ValueError, RuntimeError) as exc:
            raise OtlpError(f"the body is not a protobuf ExportTraceServiceRequest: {exc}") from None
        return message
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise OtlpError(f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise OtlpError('an OTLP JSON body is an object with "resourceSpans"')
    problem = otlp_json_error(data)  # the schema /openapi.json publishes
    if problem is not None:
        raise OtlpError(f"the body is not an OTLP JSON ExportTraceServiceRequest: {problem}")
    try:
        for resource_spans in _list(data.get("resourceSpans")):
            for scope_spans in _list(_dict(resource_spans).get("scopeSpans")):
                for span in _list(_dict(scope_spans).get("spans")):
                    span = _dict(span)
                    _hex_ids_to_base64(span)
                    for link in _list(span.get("links")):
                        _hex_ids_to_base64(_dict(link))
        json_format.ParseDict(data, message, ignore_unknown_fields=True)
    except (json_format.ParseError, OtlpError, TypeError, ValueError) as exc:
        raise OtlpError(f"the body is not an OTLP JSON ExportTraceServiceRequest: {exc}") from None
    return message


def _list(value: Any) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise OtlpError(f"expected an array, got {type(value).__name__}")
    return value


def _dict(value: Any) -> dict:
    if not isinstance(value, dict):
        raise OtlpError(f"expected an object, got {type(value).__name__}")
    return value


def _hex_ids_to_base64(obj: dict) -> None:
    """OTLP JSON writes ids as hex; protobuf's JSON mapping of ``bytes`` is base64."""
    for key in _ID_FIELDS:
        value = obj.get(key)
        if isinstance(value, str) and value:
            if not _HEX.match(value) or len(value) % 2:
                raise OtlpError(f"{key} {value[:40]!r} is not a hex string")
            obj[key] = base64.b64encode(bytes.fromhex(value)).decode()


def _value(any_value: Any) -> Any:
    field = any_value.WhichOneof("value")
    if field is None:
        return None
    if field in ("array_value", "kvlist_value", "bytes_value"):
        return None  # not used by the MCP conventions' scalar attributes
    return getattr(any_value, field)


def _attributes(key_values: Any, wanted: frozenset[str] | None = None) -> dict[str, Any]:
    out = {}
    for kv in key_values:
        if wanted is None or kv.key in wanted:
            out[kv.key] = _value(kv.value)
    return out


# ---- spans to events -----------------------------------------------------------------------


class Converted:
    __slots__ = ("events", "ignored", "invalid")

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.invalid: list[str] = []  # why each rejected MCP span was rejected
        self.ignored = 0


def convert(request: ExportTraceServiceRequest) -> Converted:
    out = Converted()
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes, frozenset({"service.name", "service.version"}))
        server = _text(resource.get("service.name")) or "unknown_service"
        version = _text(resource.get("service.version"))
        for span in _spans(resource_spans):
            attrs = _attributes(span.attributes, _WANTED)
            method = attrs.get(METHOD_ATTRIBUTE)
            if not isinstance(method, str) or span.kind != Span.SPAN_KIND_SERVER or method.startswith("notifications/"):
                out.ignored += 1  # not an MCP server span, or a notification (no request, no usage)
                continue
            try:
                out.events.append(_event(span, attrs, method, server, version))
            except ValueError as exc:
                out.invalid.append(f"span {span.span_id.hex() or '?'} ({method}): {exc}")
    return out


def _spans(resource_spans: Any) -> Iterator[Span]:
    for scope_spans in resource_spans.scope_spans:
        yield from scope_spans.spans


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


def _event(span: Span, attrs: dict[str, Any], method: str, server: str, version: str | None) -> dict[str, Any]:
    trace_id, span_id = span.trace_id, span.span_id
    if len(trace_id) != 16 or not any(trace_id):
        raise ValueError("the trace id is not 16 non-zero bytes")
    if len(span_id) != 8 or not any(span_id):
        raise ValueError("the span id is not 8 non-zero bytes")
    start, end = span.start_time_unix_nano, span.end_time_unix_nano
    if not start or not end or end < start:
        raise ValueError("the span needs a start time and an end time not before it")
    kind = kind_for_method(method)
    if kind is None:
        raise ValueError(f"mcp.method.name {method[:60]!r} is not a method name")
    event: dict[str, Any] = {
        "id": f"otel-{trace_id.hex()}-{span_id.hex()}",
        "kind": kind,
        "ts": start // 1_000_000,
        "server": server[:MAX_NAME],
        "duration_ms": round((end - start) / 1_000_000, 3),
    }
    if version:
        event["server_version"] = version[:MAX_SHORT_TEXT]
    if kind == TOOL_CALL:
        tool = _text(attrs.get("gen_ai.tool.name"))
        if tool is None and span.name.startswith(TOOLS_CALL + " "):
            tool = span.name[len(TOOLS_CALL) + 1:].strip() or None  # the convention's span name
        if tool is None:
            raise ValueError("a tools/call span needs gen_ai.tool.name")
        event["tool"] = tool
    error_type = _text(attrs.get("error.type"))
    failed = error_type is not None or span.status.code == Status.STATUS_CODE_ERROR
    event["ok"] = not failed
    outcome_class = OUTCOME_OK
    if failed:
        if error_type is None:
            code = _text(attrs.get("rpc.response.status_code"))
            error_type = error_type_for_code(code) if code else "_OTHER"
        elif error_type != TOOL_ERROR and error_type.lstrip("-").isdigit():
            error_type = error_type_for_code(error_type)  # the JSON-RPC code, as instrument() names it
        event["error_type"] = error_type[:MAX_SHORT_TEXT]
        # An exception's type name here escaped the server's handler: the server failing.
        outcome_class = outcome(False, error_type)
        message = span.status.message or _exception_message(span)
        if message:
            event["error_message"] = message
    optional = (
        ("session_id", "mcp.session.id", MAX_SHORT_TEXT), ("protocol_version", "mcp.protocol.version", MAX_PROTOCOL_VERSION),
        ("user", "user.id", MAX_USER), ("user", "enduser.id", MAX_USER),
        ("client_name", "mcp.client.name", MAX_SHORT_TEXT), ("client_name", "client.name", MAX_SHORT_TEXT),
        ("client_version", "mcp.client.version", MAX_SHORT_TEXT), ("client_version", "client.version", MAX_SHORT_TEXT),
    )
    for field, key, limit in optional:
        value = _text(attrs.get(key))
        if value is not None and field not in event:
            event[field] = value[:limit]
    transport = _transport(attrs)
    if transport:
        event["transport"] = transport
    event["attributes"] = {OUTCOME_ATTRIBUTE: outcome_class}
    if kind not in (TOOL_CALL, LIST_TOOLS):
        event["attributes"][METHOD_ATTRIBUTE] = method[:MAX_ATTRIBUTE_VALUE]
    prompt = _text(attrs.get("gen_ai.prompt.name"))
    if prompt:
        event["attributes"]["gen_ai.prompt.name"] = prompt[:MAX_ATTRIBUTE_VALUE]
    return event


def _transport(attrs: dict[str, Any]) -> str | None:
    """``network.transport`` in mcpmeter's words: pipe is stdio, tcp/quic carrying HTTP is streamable HTTP."""
    transport = _text(attrs.get("network.transport"))
    protocol = _text(attrs.get("network.protocol.name"))
    if transport == "pipe":
        return "stdio"
    if protocol == "http" or transport in ("tcp", "quic"):
        return "streamable-http"
    return transport[:MAX_TRANSPORT] if transport else None


def _exception_message(span: Span) -> str | None:
    for event in span.events:
        if event.name == "exception":
            attrs = _attributes(event.attributes, frozenset({"exception.message"}))
            message = _text(attrs.get("exception.message"))
            if message:
                return message
    return None


# ---- the endpoint --------------------------------------------------------------------------


def _status_body(code: int, message: str) -> bytes:
    """A protobuf ``google.rpc.Status`` (code = 1, message = 2), as OTLP wants for errors;
    written by hand so the server extra needs no googleapis package for two fields."""
    text = message.encode()
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_GRPC_CODES = {400: 3, 401: 16, 403: 7, 413: 3, 415: 3, 503: 14}  # INVALID_ARGUMENT, UNAUTHENTICATED, ...


def _failure(content_type: str, status: int, message: str, hint: str | None = None,
             headers: dict[str, str] | None = None) -> Response:
    if content_type == PROTOBUF:
        return Response(_status_body(_GRPC_CODES.get(status, 2), message + (f" ({hint})" if hint else "")),
                        status_code=status, media_type=PROTOBUF, headers=headers)
    body = {"error": message, **({"hint": hint} if hint else {})}
    return JSONResponse(body, status_code=status, headers=headers)


async def post_traces(request: Request) -> Response:
    collector = request.app.state.collector
    raw_type = request.headers.get("content-type", "")
    content_type = raw_type.split(";")[0].strip().lower()
    if content_type not in (PROTOBUF, JSON):
        return _failure(JSON, 415, f"Content-Type {raw_type!r} is not accepted",
                        f"send OTLP/HTTP as {PROTOBUF} or {JSON}")
    try:
        principal = collector.auth.authenticate(request, "ingest")
    except AuthError as exc:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _failure(content_type, exc.status, str(exc), exc.hint, headers)
    limit = collector.config.max_body_bytes
    if not collector.names.loaded(principal.project.id):
        await run_in_threadpool(collector.names.load, principal.project.id)
    try:
        body = await read_body(request, limit, principal, json=content_type == JSON)
        converted = convert(parse_request(body, content_type))
        events, rejected = _validate(converted.events, collector.config.limits, principal.admitting(collector.names.admitter(principal.project.id)))
    except AuthError as exc:  # a signature that does not match
        return _failure(content_type, exc.status, str(exc), exc.hint, {"WWW-Authenticate": "Bearer"})
    except BodyTooLarge:
        return _failure(content_type, 413, f"the body is larger than {limit} bytes",
                        "export smaller batches (OTEL_BSP_MAX_EXPORT_BATCH_SIZE) or raise MCPMETER_MAX_BODY_BYTES")
    except (BatchError, OtlpError) as exc:
        return _failure(content_type, 400, str(exc), "see docs/opentelemetry.md")
    rows = rows_for(principal.project, events)
    try:
        result = await collector.writer.submit(principal.project.id, rows)
    except Overloaded as exc:
        collector.counters["requests_failed"] += 1
        return _failure(content_type, 503, f"the collector is overloaded ({exc}); nothing was stored",
                        "retry later", {"Retry-After": "2"})
    except Unstorable as exc:  # this request's values, not the store (OTLP: 400 is not retried)
        collector.counters["requests_failed"] += 1
        return _failure(content_type, 400, f"{exc}; nothing of this request was stored", exc.hint)
    except StorageError:
        collector.counters["requests_failed"] += 1
        return _failure(content_type, 503, "the store is unavailable; nothing was stored", "retry later",
                        {"Retry-After": "5"})
    invalid = converted.invalid + [f"span {r.id or r.index}: {r.error}" for r in rejected]
    collector.counters["accepted"] += result.accepted
    collector.counters["duplicates"] += result.duplicates
    collector.counters["rejected"] += len(invalid)
    answer = ExportTraceServiceResponse()
    if invalid:
        answer.partial_success.rejected_spans = len(invalid)
        more = f" (and {len(invalid) - 1} more)" if len(invalid) > 1 else ""
        answer.partial_success.error_message = f"{len(invalid)} MCP spans were rejected: {invalid[0]}{more}"
    headers = {
        "X-MCPMeter-Accepted": str(result.accepted),
        "X-MCPMeter-Duplicates": str(result.duplicates),
        "X-MCPMeter-Ignored-Spans": str(converted.ignored),
    }
    if content_type == PROTOBUF:
        return Response(answer.SerializeToString(), media_type=PROTOBUF, headers=headers)
    return Response(json_format.MessageToJson(answer, indent=None).encode(), media_type=JSON, headers=headers)


def _validate(candidates: list[dict[str, Any]], limits, admit=None) -> tuple[list, list[Rejection]]:
    """The /v1/events validation, on the events made from spans (one batch per request)."""
    if not candidates:
        return [], []
    events, rejected = decode_batch(_encode(candidates), limits, admit=admit)
    # an event of the batch that is rejected carries the index of its span's event
    return events, [dataclasses.replace(r, id=r.id or candidates[r.index]["id"]) for r in rejected]


__all__ = ["JSON", "PROTOBUF", "OtlpError", "convert", "parse_request", "post_traces"]

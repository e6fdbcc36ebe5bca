"""The MCP directory's metrics API (seed 003), at its own paths, stored as mcpmeter data.

=================================== ====================================================================
``POST /functions/v1/metrics-collect`` ``{"server_id", "metrics": [{"name", "value", "type", "tags",
                                     "timestamp"}]}`` - counters, gauges and timers, exactly as
                                     ``POST /v1/measurements`` (which takes ``server_id`` too): the
                                     whole request or nothing, signed when the key requires it
``GET /functions/v1/metrics-fetch``  ``server_id`` (or ``server``), ``period`` (1h ... 90d, or ``from`` /
                                     ``to``), ``metrics=a,b`` (several names; all when omitted): the
                                     registry's ``measurements`` question per name, with the server's
                                     lifecycle events of the window
``POST /functions/v1/usage-track``   ``{"server_id", "action", "details"}`` (views, installations, tool
                                     usage; one object or a list): each an event of kind ``action``, so
                                     the actions are counted per server like any other event kind
=================================== ====================================================================

Keys: ingest for the two POSTs, read for the fetch; a key bound to servers (``mcpmeter keys
create --server``) may submit only for those. Errors have mcpmeter's shape
(``{"error", "hint"}``): the seed names no other.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ...analytics import questions
from ...events import decode_batch, event_id, fit_attributes
from ...exceptions import BatchError, BodyTooLarge, Overloaded, StorageError, Unstorable, ValidationError
from ...ingest import rows_for
from ...protocol import KIND_FOR_METHOD, SDK_DROPPED, SESSION_END, SESSION_START, TOOL_LISTED
from . import measurements
from .ingest import read_body, unstorable
from .responses import error

MAX_FETCH_METRICS = 50  # names in one ``metrics=`` list
MAX_ACTIONS = 1000  # usage-track items in one request
# Kinds mcpmeter itself records: an interaction named like one would be counted as MCP traffic.
RESERVED_ACTIONS = frozenset({*KIND_FOR_METHOD.values(), SESSION_START, SESSION_END, TOOL_LISTED, SDK_DROPPED})
_USER_KEYS = ("user_id", "user")  # taken out of ``details``: a user is stored only as a keyed hash
_TOOL_KEYS = ("tool_name", "tool")


# ---- metrics-collect ------------------------------------------------------------------------


async def collect(request: Request) -> Response:
    return await measurements.post_measurements(request)


# ---- metrics-fetch ----------------------------------------------------------------------------


def fetch_params(query: dict[str, str]) -> tuple[dict[str, str | None], list[str | None]]:
    """The ``measurements`` question's parameters and the metric names (``[None]``: every metric)."""
    params: dict[str, str | None] = dict(query)
    server_id = params.pop("server_id", None)
    if server_id is not None:
        if params.get("server") not in (None, server_id):
            raise ValidationError("server_id and server name different servers", hint="give one of them")
        params["server"] = server_id
    listed = params.pop("metrics", None) or ""
    names: list[str | None] = list(dict.fromkeys(n.strip() for n in listed.split(",") if n.strip())) or [None]
    if len(names) > MAX_FETCH_METRICS:
        raise ValidationError(f"at most {MAX_FETCH_METRICS} metric names in `metrics`", hint="ask in several requests")
    if "name" in params:
        names = [params.pop("name")] if names == [None] else names
    return params, names


def fetch_answer(store: Any, project_id: int, params: dict[str, str]) -> dict[str, Any]:
    own, names = fetch_params(params)
    question = questions.QUESTIONS["measurements"]
    query, _ = questions.parse(question, own, project_id)
    series: list[dict[str, Any]] = []
    for name in names:
        series += questions.ask(store, question, query, {"name": name})["series"]
    events = questions.ask(store, questions.QUESTIONS["server-events"], query)["events"]
    return {**query.describe(), "server_id": own.get("server"), "period": own.get("period") or questions.PERIOD.default,
            "metrics": [n for n in names if n is not None] or None, "series": series, "events": events}


async def fetch(request: Request) -> Response:
    collector = request.app.state.collector
    principal = collector.auth.authenticate(request, "read")
    answer = await run_in_threadpool(fetch_answer, collector.store, principal.project.id, dict(request.query_params))
    return JSONResponse({"project": principal.project.name, **answer})


# ---- usage-track ------------------------------------------------------------------------------


def _content_id(item: dict[str, Any], nth: int) -> str:
    content = json.dumps(item, sort_keys=True, default=str) + (f"\x1e{nth}" if nth else "")
    return "u-" + hashlib.sha256(content.encode()).hexdigest()[:32]


def action_event(item: Any, where: str, now_ms: int, nth: int = 0) -> dict[str, Any]:
    """One usage-track item as an event (to be validated by ``decode_batch``), or BatchError."""
    if not isinstance(item, dict):
        raise BatchError(f"{where}: an item is an object {{\"server_id\", \"action\", \"details\"}}")
    unknown = set(item) - {"server_id", "server", "action", "details", "timestamp", "id", "user_id"}
    if unknown:
        raise BatchError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    server, action, details = item.get("server_id", item.get("server")), item.get("action"), item.get("details") or {}
    if not isinstance(server, str) or not server:
        raise BatchError(f"{where}.server_id: the server's id (a string) is required")
    if not isinstance(action, str) or not action:
        raise BatchError(f"{where}.action: the action (e.g. view, install, tool_usage) is required")
    if action in RESERVED_ACTIONS:
        raise BatchError(f"{where}.action: {action!r} is an event kind mcpmeter records itself; "
                         "name the interaction instead (e.g. view, install, tool_usage)")
    if not isinstance(details, dict):
        raise BatchError(f"{where}.details: details are an object")
    details = dict(details)
    user = item.get("user_id")
    for key in _USER_KEYS:
        value = details.pop(key, None)
        user = user if user is not None else value
    tool = next((details[k] for k in _TOOL_KEYS if isinstance(details.get(k), str) and details[k]), None)
    timestamp = item.get("timestamp")
    event: dict[str, Any] = {
        "id": item.get("id") or (_content_id(item, nth) if timestamp is not None else event_id(now_ms)),
        "kind": action, "ts": now_ms if timestamp is None else timestamp, "server": server,
    }
    if tool is not None:
        event["tool"] = tool
    if user is not None:
        event["user"] = str(user)
    attributes = fit_attributes(details)
    if attributes:
        event["attributes"] = attributes
    return event


def action_candidates(body: bytes, now_ms: int | None = None) -> list[dict[str, Any]]:
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    try:
        parsed = json.loads(body)
    except ValueError as exc:
        raise BatchError(f"the body is not JSON: {exc}") from None
    items = parsed if isinstance(parsed, list) else [parsed]
    if not items or len(items) > MAX_ACTIONS:
        raise BatchError(f"send one action, or a list of 1 to {MAX_ACTIONS}")
    seen: dict[str, int] = {}
    out = []
    for i, item in enumerate(items):
        key = json.dumps(item, sort_keys=True, default=str)
        nth = seen[key] = seen.get(key, -1) + 1  # identical items of one request are each counted
        out.append(action_event(item, f"$[{i}]" if isinstance(parsed, list) else "$", now_ms, nth))
    return out


async def track(request: Request) -> Response:
    collector = request.app.state.collector
    principal = collector.auth.authenticate(request, "ingest")
    project = principal.project
    names = collector.names
    if not names.loaded(project.id):
        await run_in_threadpool(names.load, project.id)
    try:
        body = await read_body(request, collector.config.max_body_bytes, principal)
        candidates = action_candidates(body)
        events, rejected = decode_batch(msgspec.json.encode(candidates), collector.config.limits,
                                        admit=principal.admitting(names.admitter(project.id)))
    except BodyTooLarge:
        return error(413, f"the body is larger than {collector.config.max_body_bytes} bytes", "send fewer actions")
    except BatchError as exc:
        return error(422, str(exc), 'send {"server_id": "...", "action": "view", "details": {...}}')
    try:
        result = await collector.writer.submit(project.id, rows_for(project, events)) if events else None
    except Overloaded as exc:
        collector.counters["requests_failed"] += 1
        return error(503, f"the collector is overloaded ({exc}); nothing was stored", "retry later", {"Retry-After": "2"})
    except Unstorable as exc:
        collector.counters["requests_failed"] += 1
        return unstorable(exc)
    except StorageError:
        collector.counters["requests_failed"] += 1
        raise
    accepted, duplicates = (result.accepted, result.duplicates) if result else (0, 0)
    collector.counters["accepted"] += accepted
    collector.counters["rejected"] += len(rejected)
    answer = {"success": bool(events), "accepted": accepted, "duplicates": duplicates,
              "rejected": [r.as_dict() for r in rejected]}
    if rejected and not events:
        return JSONResponse({**answer, "error": f"all {len(rejected)} actions were rejected; nothing was stored"},
                            status_code=422)
    return JSONResponse(answer)


routes = [
    Route("/functions/v1/metrics-collect", collect, methods=["POST"]),
    Route("/functions/v1/metrics-fetch", fetch, methods=["GET"]),
    Route("/functions/v1/usage-track", track, methods=["POST"]),
]

"""Admin JSON endpoints behind the dashboard's admin page (admin scope, own project only).

- ``GET /v1/admin/projects`` — the caller's project (a key never sees other projects)
- ``GET /v1/admin/keys`` / ``POST /v1/admin/keys`` / ``DELETE /v1/admin/keys/{name or prefix}``
  — the project's keys; a new key is in the POST answer and nowhere else, ever
- ``GET /v1/admin/health`` — the project's ingest rate, live streams and sessions; and for
  the collector's operators only (``is_operator``), the collector's own state: rejects,
  duplicates, drops, writer queue depth, storage size, every project's streams and sessions

Who operates the collector: whoever reads project ``default`` — the project of loopback
trust, of the ``MCPMETER_API_KEY_*`` ingest keys and of ``MCPMETER_METRICS_KEY`` (a read key
named ``metrics``). Collector-wide figures (here and on ``/metrics``) are theirs alone: they
add up every tenant's traffic. Other projects' admins see their own project's figures only.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ... import admin
from ...analytics.periods import iso, window
from ...analytics.queries import Query
from ...exceptions import StorageError
from ...storage.base import KeyInfo, Store
from ..collector import audit
from ..collector.admin_security import ADMIN_ERRORS, admin_error, json_body
from ..collector.auth import DEFAULT_PROJECT, Principal
from ..collector.responses import error


def is_operator(principal: Principal) -> bool:
    """May this caller see collector-wide figures (all tenants' traffic, storage, requests)?"""
    return principal.project.name == DEFAULT_PROJECT


def _admin(request: Request):
    collector = request.app.state.collector
    return collector, collector.auth.authenticate(request, "admin")


def _key_row(k: KeyInfo, now_ms: int, pending: dict[int, int]) -> dict[str, Any]:
    last = max(filter(None, (k.last_used_at, pending.get(k.id))), default=None)
    state = "active" if k.active(now_ms) else ("revoked" if k.revoked_at else "expired")
    return {"name": k.name, "prefix": k.prefix, "scopes": sorted(k.scopes), "created": iso(k.created_at),
            "last_used": iso(last) if last else None, "expires": iso(k.expires_at) if k.expires_at else None,
            "revoked": iso(k.revoked_at) if k.revoked_at else None, "state": state,
            "servers": sorted(k.servers) if k.servers else None}


async def list_keys(request: Request) -> Response:
    collector, principal = _admin(request)
    found = await run_in_threadpool(collector.store.list_keys, principal.project.id)
    now_ms = int(time.time() * 1000)
    pending = dict(collector.auth.last_used)
    return JSONResponse({"project": principal.project.name,
                         "keys": [_key_row(k, now_ms, pending) for k in found]})


async def create_key(request: Request) -> Response:
    collector, principal = _admin(request)
    body = await json_body(request)
    if body is None:
        return error(400, "send JSON: {\"name\": ..., \"scopes\": [\"read\"], \"expires_days\": null, \"servers\": null}")
    try:
        made = await run_in_threadpool(admin.create_key, collector.store, audit.actor(request, principal), principal.project,
                                       body.get("name"), body.get("scopes", ["read"]), body.get("expires_days"),
                                       False, body.get("servers"))
    except ADMIN_ERRORS as exc:
        return admin_error(exc)
    row = _key_row(made.info, int(time.time() * 1000), {})
    return JSONResponse({"project": principal.project.name, "key": made.key, **row,
                         "note": "this is the only time the key is shown; store it now"}, status_code=201,
                        headers={"Cache-Control": "no-store"})


async def revoke_key(request: Request) -> Response:
    collector, principal = _admin(request)
    try:
        count = await run_in_threadpool(admin.revoke_key, collector.store, audit.actor(request, principal),
                                        principal.project, request.path_params["ref"])
    except ADMIN_ERRORS as exc:
        return admin_error(exc)
    return JSONResponse({"project": principal.project.name, "revoked": count})


def _calls_30d(store: Any, project_id: int) -> int:
    q = Query(project_id, window("30d"))
    return sum(cell[5] for cell in store.cells(q.filter, q.window.grain))


async def projects(request: Request) -> Response:
    """The caller's project only: keys are per project, and so is everything an admin key may see."""
    collector, principal = _admin(request)
    p = principal.project
    found = await run_in_threadpool(collector.store.list_keys, p.id)
    calls = await run_in_threadpool(_calls_30d, collector.store, p.id)
    now_ms = int(time.time() * 1000)
    return JSONResponse({"projects": [{
        "name": p.name, "created": iso(p.created_at), "current": True,
        "keys_active": sum(1 for k in found if k.active(now_ms)), "keys_total": len(found),
        "calls_30d": calls, "live_subscribers": collector.live.subscribers(p.id),
    }]})


def storage_bytes(store: Store) -> int | None:
    """The store's size on disk (SQLite: the file and its WAL), or None where the backend does not tell."""
    return store.size_bytes()


async def health(request: Request) -> Response:
    collector, principal = _admin(request)
    live = collector.live
    project_id = principal.project.id
    answer: dict[str, Any] = {
        "project": principal.project.name,
        "ingest": {"events_per_second_1m": live.rate.per_second(project_id),
                   "accepted_since_start": live.rate.totals.get(project_id, 0)},
        "live_subscribers": live.subscribers(project_id),
        "sessions": await run_in_threadpool(collector.sessions.count, project_id),
        "collector": None,  # collector-wide: for the collector's operators only
    }
    if is_operator(principal):
        writer = collector.writer
        try:
            size = await run_in_threadpool(storage_bytes, collector.store)
        except (StorageError, OSError):
            size = None
        counters = dict(collector.counters)
        answer["collector"] = {
            "uptime_seconds": round(time.time() - collector.started),
            "writer_alive": writer.alive,
            "writer_queue_rows": writer.pending_rows,
            "writer_commits": writer.commits,
            "writer_errors": writer.errors,
            "accepted": counters.get("accepted", 0),
            "duplicates": counters.get("duplicates", 0),
            "rejected": counters.get("rejected", 0),
            "refused_requests": counters.get("requests_failed", 0),
            "live_subscribers": live.subscribers(),
            "live_messages_dropped": live.dropped,
            "storage_bytes": size,
            "sessions": await run_in_threadpool(collector.sessions.count, None),
        }
    return JSONResponse(answer, headers={"Cache-Control": "no-store"})


routes = [
    Route("/v1/admin/projects", projects, methods=["GET"]),
    Route("/v1/admin/keys", list_keys, methods=["GET"]),
    Route("/v1/admin/keys", create_key, methods=["POST"]),
    Route("/v1/admin/keys/{ref}", revoke_key, methods=["DELETE"]),
    Route("/v1/admin/health", health, methods=["GET"]),
]

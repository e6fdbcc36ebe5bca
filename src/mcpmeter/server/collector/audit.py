"""The audit log: who did what to which project, and when.

Recorded: key create, revoke and rotate; project create; people's access grants and
revocations; erasing a user's data. Whether done with the CLI (the actor is the OS user)
or over HTTP (the actor is the key's prefix, or the signed-in person's OIDC subject and
email). Entries are written in the same transaction as the change where the store does
the change in one method (rotation, access, erasure); for key creation, revocation and
project creation right after it. ``mcpmeter audit`` and ``GET /v1/admin/audit`` show it.
"""

from __future__ import annotations

import getpass
import json
import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ...storage.base import AuditEntry, Project

ACTIONS = ("key.create", "key.revoke", "key.rotate", "project.create", "access.grant", "access.revoke", "user.delete")


def os_actor() -> str:
    try:
        return f"os:{getpass.getuser()}"
    except Exception:  # getuser() raises whatever the platform lookup raised
        return "os:unknown"


def entry(actor: str, action: str, project: Project | None, target: str | None = None,
          detail: dict[str, Any] | None = None, source: str = "cli") -> AuditEntry:
    return AuditEntry(int(time.time() * 1000), project.id if project else None, project.name if project else None,
                      actor, action, target, json.dumps(detail, sort_keys=True) if detail else None, source)


def record(store: Any, actor: str, action: str, project: Project | None, target: str | None = None,
           detail: dict[str, Any] | None = None, source: str = "cli") -> None:
    store.add_audit(entry(actor, action, project, target, detail, source))


async def record_request(request: Request, principal: Any, action: str, target: str | None = None,
                         detail: dict[str, Any] | None = None) -> None:
    """Record an action done over HTTP by ``principal`` (an admin key, or a person)."""
    collector = request.app.state.collector
    client = request.client.host if request.client else None
    await run_in_threadpool(record, collector.store, principal.actor, action, principal.project, target,
                            {**(detail or {}), **({"address": client} if client else {})}, "http")


def as_dict(e: AuditEntry) -> dict[str, Any]:
    from ...analytics.periods import iso

    return {"time": iso(e.ts), "project": e.project, "actor": e.actor, "action": e.action, "target": e.target,
            "detail": json.loads(e.detail) if e.detail else None, "source": e.source}


async def get_audit(request: Request) -> Response:
    """``GET /v1/admin/audit?since=7d&limit=200``: the caller's project's entries, oldest first."""
    from ...keys import parse_duration
    from .responses import error

    collector = request.app.state.collector
    principal = collector.auth.authenticate(request, "admin")
    unknown = set(request.query_params) - {"since", "limit"}
    if unknown:
        return error(400, f"unknown query parameter(s): {', '.join(sorted(unknown))}", "allowed: since, limit")
    try:
        since = int(time.time() * 1000) - parse_duration(request.query_params.get("since", "30d"))
        limit = int(request.query_params.get("limit", "500"))
        if not 1 <= limit <= 10_000:
            raise ValueError("limit must be from 1 to 10000")
    except ValueError as exc:
        return error(400, str(exc), "e.g. ?since=7d&limit=100")
    found = await run_in_threadpool(collector.store.audit_entries, principal.project.id, since, limit)
    return JSONResponse({"project": principal.project.name, "entries": [as_dict(e) for e in found]},
                        headers={"Cache-Control": "no-store"})


routes = [Route("/v1/admin/audit", get_audit, methods=["GET"])]

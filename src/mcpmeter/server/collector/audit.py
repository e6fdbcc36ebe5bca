"""``GET /v1/admin/audit``: the audit log over HTTP (admin scope, the caller's project only).

Recorded: key create, revoke and rotate; project create; people's access grants and
revocations; erasing a user's data. Whether done with the CLI (the actor is the OS user)
or over HTTP (the actor is the key's prefix, or the signed-in person's OIDC subject and
email). Every entry is written in the same transaction as the change it records, by the
admin use-cases in ``mcpmeter.admin`` (which ``mcpmeter audit`` reads too).
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ... import admin
from ...exceptions import ValidationError
from .responses import error


def actor(request: Request, principal) -> admin.Actor:
    """Who acts in an admin request: the principal (an admin key, or a person), from its address."""
    return admin.Actor(principal.actor, "http", request.client.host if request.client else None)


async def get_audit(request: Request) -> Response:
    """``GET /v1/admin/audit?since=7d&limit=200``: the caller's project's entries, oldest first."""
    collector = request.app.state.collector
    principal = collector.auth.authenticate(request, "admin")
    unknown = set(request.query_params) - {"since", "limit"}
    if unknown:
        return error(400, f"unknown query parameter(s): {', '.join(sorted(unknown))}", "allowed: since, limit")
    try:
        limit = int(request.query_params.get("limit", "500"))
        if not 1 <= limit <= 10_000:
            raise ValueError("limit must be from 1 to 10000")
        found = await run_in_threadpool(admin.audit_log, collector.store, principal.project,
                                        request.query_params.get("since", "30d"), limit)
    except (ValueError, ValidationError) as exc:
        return error(400, str(exc), "e.g. ?since=7d&limit=100")
    return JSONResponse({"project": principal.project.name, "entries": found}, headers={"Cache-Control": "no-store"})


routes = [Route("/v1/admin/audit", get_audit, methods=["GET"])]

"""Admin endpoints of the security features (admin scope; the caller's own project only).

- ``POST /v1/admin/keys/{name}/rotate`` ``{"overlap": "24h"}`` — a successor key with the
  same scopes (and a new signing secret if the old one required signatures); the old key
  expires after the overlap. The new key and secret are in this answer and nowhere else.
- ``GET|POST|DELETE /v1/admin/access`` — which people (OIDC email, ``sub:``, ``group:``)
  may see the project, as viewer or admin.
- ``DELETE /v1/admin/users?user=ID`` — erase one user's data (see docs/security.md).
- ``GET /v1/admin/audit`` — the audit log (``audit.py``).

The use-cases themselves, their validation and their audit entries are ``mcpmeter.admin``,
shared with the CLI; ``admin_error`` is how their errors are answered over HTTP.
"""

from __future__ import annotations

import re
import time
from typing import Any

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ... import admin
from ...analytics.periods import iso
from ...exceptions import ConflictError, MCPMeterError, NotFoundError, ValidationError
from . import audit
from .ingest import read_body
from .responses import error


def admin_error(exc: MCPMeterError, invalid: int = 422) -> Response:
    """An admin use-case's error as an answer: ``invalid`` for bad arguments, 404, 409."""
    if isinstance(exc, ValidationError):
        return error(invalid, str(exc), exc.hint)
    if isinstance(exc, NotFoundError):
        return error(404, str(exc), exc.hint)
    if isinstance(exc, ConflictError):
        return error(409, str(exc), exc.hint)
    raise exc


ADMIN_ERRORS = (ValidationError, NotFoundError, ConflictError)


ADMIN_BODY_LIMIT = 64 * 1024  # an admin or sign-in request is a few fields


async def json_body(request: Request) -> dict[str, Any] | None:
    """The JSON object a small request (admin, sign-in) sends; None when it is not one.

    Read like every ingest body (``read_body``: size limit, gzip, nesting depth: 400 when
    broken); strict UTF-8 (a lone surrogate is not text); a NUL in any string is refused (400),
    since PostgreSQL cannot store one.
    """
    body = await read_body(request, ADMIN_BODY_LIMIT)
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    if not isinstance(value, dict):
        return None
    if _NUL_ESCAPE.search(body):
        raise ValidationError("the request body has a NUL character (\\u0000) in a string", hint="remove it")
    return value


# In valid JSON a NUL can only be written ``\u0000``, preceded by an even number of backslashes.
_NUL_ESCAPE = re.compile(rb"(?:^|[^\\])(?:\\\\)*\\u0000")


async def rotate_key(request: Request) -> Response:
    collector = request.app.state.collector
    principal = collector.auth.authenticate(request, "admin")
    body = await json_body(request) if int(request.headers.get("content-length") or 0) else {}
    if body is None:
        return error(400, 'send JSON: {"overlap": "24h"} (or no body for the default, 24h)')
    try:
        rotated = await run_in_threadpool(admin.rotate_key, collector.store, audit.actor(request, principal),
                                          principal.project, request.path_params["name"], str(body.get("overlap", "24h")))
    except ADMIN_ERRORS as exc:
        return admin_error(exc)
    old, new = rotated.old, rotated.new
    assert old.expires_at is not None  # a rotated key always expires after its overlap
    answer = {"project": principal.project.name, "key": rotated.key, "name": new.name, "prefix": new.prefix,
              "scopes": sorted(new.scopes), "old": {"name": old.name, "prefix": old.prefix, "expires": iso(old.expires_at)},
              "note": "this is the only time the key is shown; store it now"}
    if rotated.signing_secret:
        answer["signing_secret"] = rotated.signing_secret
    return JSONResponse(answer, status_code=201, headers={"Cache-Control": "no-store"})


async def list_access(request: Request) -> Response:
    collector = request.app.state.collector
    principal = collector.auth.authenticate(request, "admin")
    rows = await run_in_threadpool(collector.store.list_access, principal.project.id)
    return JSONResponse({"project": principal.project.name,
                         "access": [{"identity": i, "role": r, "granted": iso(t)} for _, i, r, t in rows]})


async def grant_access(request: Request) -> Response:
    collector = request.app.state.collector
    principal = collector.auth.authenticate(request, "admin")
    body = await json_body(request)
    if body is None:
        return error(422, 'send JSON: {"identity": "alice@example.com" | "sub:…" | "group:…", "role": "viewer" | "admin"}')
    role = body.get("role", "viewer")
    try:
        identity = await run_in_threadpool(admin.grant_access, collector.store, audit.actor(request, principal),
                                           principal.project, body.get("identity"), role)
    except ADMIN_ERRORS as exc:
        return admin_error(exc)
    return JSONResponse({"project": principal.project.name, "identity": identity, "role": role}, status_code=201)


async def revoke_access(request: Request) -> Response:
    collector = request.app.state.collector
    principal = collector.auth.authenticate(request, "admin")
    identity = request.query_params.get("identity")
    if not identity:
        return error(400, "name the identity: DELETE /v1/admin/access?identity=alice@example.com")
    try:
        identity = await run_in_threadpool(admin.revoke_access, collector.store, audit.actor(request, principal),
                                           principal.project, identity)
    except ADMIN_ERRORS as exc:
        return admin_error(exc)
    return JSONResponse({"project": principal.project.name, "revoked": identity})


async def delete_user(request: Request) -> Response:
    collector = request.app.state.collector
    principal = collector.auth.authenticate(request, "admin")
    started = time.perf_counter()
    try:
        user_hash, counts = await run_in_threadpool(admin.delete_user, collector.store, audit.actor(request, principal),
                                                    principal.project, request.query_params.get("user"))
    except ADMIN_ERRORS as exc:
        return admin_error(exc, invalid=400)
    return JSONResponse({"project": principal.project.name, "user_hash": user_hash, "deleted": counts,
                         "seconds": round(time.perf_counter() - started, 3)})


routes = [
    Route("/v1/admin/keys/{name}/rotate", rotate_key, methods=["POST"]),
    Route("/v1/admin/access", list_access, methods=["GET"]),
    Route("/v1/admin/access", grant_access, methods=["POST"]),
    Route("/v1/admin/access", revoke_access, methods=["DELETE"]),
    Route("/v1/admin/users", delete_user, methods=["DELETE"]),
    *audit.routes,
]

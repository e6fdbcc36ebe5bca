"""Admin endpoints of the security features (admin scope; the caller's own project only).

- ``POST /v1/admin/keys/{name}/rotate`` ``{"overlap": "24h"}`` — a successor key with the
  same scopes (and a new signing secret if the old one required signatures); the old key
  expires after the overlap. The new key and secret are in this answer and nowhere else.
- ``GET|POST|DELETE /v1/admin/access`` — which people (OIDC email, ``sub:``, ``group:``)
  may see the project, as viewer or admin.
- ``DELETE /v1/admin/users?user=ID`` — erase one user's data (see docs/security.md).
- ``GET /v1/admin/audit`` — the audit log (``audit.py``).

Every change is written to the audit log.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ... import keys as keylib
from ...analytics.periods import iso
from ...ingest import hasher_for
from ..oidc import ROLES, normalize_identity
from . import audit
from .responses import error
from .security import new_signing_secret


async def _json_body(request: Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


async def rotate_key(request: Request) -> Response:
    collector = request.app.state.collector
    principal = collector.auth.authenticate(request, "admin")
    name = request.path_params["name"]
    body = await _json_body(request) if int(request.headers.get("content-length") or 0) else {}
    if body is None:
        return error(400, 'send JSON: {"overlap": "24h"} (or no body for the default, 24h)')
    try:
        overlap = keylib.parse_duration(str(body.get("overlap", "24h")))
    except ValueError as exc:
        return error(422, str(exc), "overlap is how long the old key keeps working, e.g. 24h")
    store = collector.store
    current = [k for k in await run_in_threadpool(store.list_keys, principal.project.id) if k.name == name]
    old_secret = await run_in_threadpool(store.signing_secret, current[0].id) if current else None
    key = keylib.new_key()
    secret = new_signing_secret() if old_secret else None
    record = audit.entry(principal.actor, "key.rotate", principal.project, name, {"overlap_ms": overlap}, "http")
    rotated = await run_in_threadpool(store.rotate_key, principal.project.id, name, keylib.hash_key(key),
                                      keylib.display_prefix(key), overlap, secret, record)
    if rotated is None:
        return error(404, f"no active key named {name!r} in this project", "GET /v1/admin/keys lists them")
    old, new = rotated
    answer = {"project": principal.project.name, "key": key, "name": new.name, "prefix": new.prefix,
              "scopes": sorted(new.scopes), "old": {"name": old.name, "prefix": old.prefix, "expires": iso(old.expires_at)},
              "note": "this is the only time the key is shown; store it now"}
    if secret:
        answer["signing_secret"] = secret
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
    body = await _json_body(request)
    identity, role = (body or {}).get("identity"), (body or {}).get("role", "viewer")
    if not isinstance(identity, str) or not identity.strip() or len(identity) > 320 or role not in ROLES:
        return error(422, 'send JSON: {"identity": "alice@example.com" | "sub:…" | "group:…", "role": "viewer" | "admin"}')
    identity = normalize_identity(identity)
    record = audit.entry(principal.actor, "access.grant", principal.project, identity, {"role": role}, "http")
    await run_in_threadpool(collector.store.grant_access, principal.project.id, identity, role, record)
    return JSONResponse({"project": principal.project.name, "identity": identity, "role": role}, status_code=201)


async def revoke_access(request: Request) -> Response:
    collector = request.app.state.collector
    principal = collector.auth.authenticate(request, "admin")
    identity = request.query_params.get("identity")
    if not identity:
        return error(400, "name the identity: DELETE /v1/admin/access?identity=alice@example.com")
    identity = normalize_identity(identity)
    record = audit.entry(principal.actor, "access.revoke", principal.project, identity, None, "http")
    if not await run_in_threadpool(collector.store.revoke_access, principal.project.id, identity, record):
        return error(404, f"{identity!r} has no access to this project", "GET /v1/admin/access lists who has")
    return JSONResponse({"project": principal.project.name, "revoked": identity})


async def delete_user(request: Request) -> Response:
    collector = request.app.state.collector
    principal = collector.auth.authenticate(request, "admin")
    user = request.query_params.get("user")
    if not user or len(user) > 512:
        return error(400, "name the user: DELETE /v1/admin/users?user=<the identifier the SDK recorded>",
                     "for users hashed on the client, pass the h:… form (`mcpmeter users hash ID` on that machine)")
    user_hash = hasher_for(principal.project)(user)
    record = audit.entry(principal.actor, "user.delete", principal.project, user_hash, None, "http")
    started = time.perf_counter()
    counts = await run_in_threadpool(collector.store.delete_user, principal.project.id, user_hash, record)
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

"""Dashboard sign-in: the browser trades a read key for a server-side session.

The key never reaches the page's JavaScript and is never stored in the browser: signing in
(``POST /v1/session`` with the key) checks it and answers with a random session token in an
``HttpOnly; SameSite=Strict`` cookie (``Secure`` over https). The collector keeps, per
token digest, only the hash of the key it stands for, so every request made with the cookie
is authorised exactly as the key would be (scopes, project, revocation within a second).

Cross-site request forgery: the cookie is ``SameSite=Strict``, and a cookie-authenticated
request that changes something (any method but GET/HEAD/OPTIONS) must also carry the
``X-MCPMeter-CSRF`` header, which a cross-site form cannot send and a cross-site script can
only send after a CORS preflight the collector never grants. Sign-in needs the header too.

Sessions live in the store (``dashboard_sessions``), so every worker of ``mcpmeter serve
--workers N`` and every collector on one PostgreSQL database knows every session, and a
sign-out or an expiry holds at the next request wherever it lands. Only the token's SHA-256
is stored. Caps: ``MAX_SESSIONS_PER_OWNER`` per key (or per person) and
``MAX_SESSIONS_PER_PROJECT`` per project; signing in beyond a cap ends the oldest session of
that key (or person), then the oldest of that project — never another project's.

``safe_next`` is the one rule for where a browser may be sent after signing in: a path on
this site, nothing that a browser could read as another site.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import unicodedata
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ... import keys
from ...exceptions import AuthError
from ...storage.base import SessionRow
from ..collector.admin_security import json_body
from ..collector.auth import presented_key
from ..collector.responses import error

COOKIE = "mcpmeter_session"
CSRF_HEADER = "x-mcpmeter-csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION_SECONDS = 7 * 86_400
MAX_SESSIONS_PER_OWNER = 50  # one key (or one person): its own oldest session ends first
MAX_SESSIONS_PER_PROJECT = 2_000
MAX_NEXT = 2048


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def safe_next(target: str | None) -> str:
    """``target`` when it is a path on this site, else ``/``.

    Browsers drop tabs and newlines anywhere in a URL, trim spaces and control characters,
    and read ``\\`` as ``/``: so ``/<TAB>/evil.example`` becomes ``//evil.example``, another
    site. Refused: anything not starting with one ``/``, any control, whitespace or
    backslash character (the value is already percent-decoded), a scheme or a host.
    """
    if not target or len(target) > MAX_NEXT or not target.startswith("/") or target.startswith("//"):
        return "/"
    if any(c == "\\" or c.isspace() or unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in target):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


class Sessions:
    """Dashboard sessions in the store: token digest -> (project, owner, person, expiry).

    ``key_hash`` is what ``collector.auth`` asks of a request; the row it read is kept for
    the rest of that call in this thread (``current``), so a person's session is read once.
    """

    def __init__(self, store, ttl: float = SESSION_SECONDS, per_owner: int = MAX_SESSIONS_PER_OWNER,
                 per_project: int = MAX_SESSIONS_PER_PROJECT) -> None:
        self.store = store
        self.ttl = ttl
        self.per_owner = per_owner
        self.per_project = per_project
        self.evicted = 0  # sessions this process ended to make room (caps)
        self._current = threading.local()

    def count(self, project_id: int | None = None) -> int:
        """Live sessions of one project (None: of the whole store; blocking)."""
        return self.store.count_sessions(project_id)

    def create(self, project_id: int, owner: str, person: str | None = None) -> str:
        """A new session (blocking); ``owner`` is the key's hash, or ``oidc:<subject>``."""
        token = secrets.token_urlsafe(32)
        self.evicted += self.store.add_session(digest(token), project_id, owner, person,
                                               int((time.time() + self.ttl) * 1000), self.per_owner, self.per_project)
        return token

    def drop(self, token: str | None) -> None:
        if token:
            self.store.drop_session(digest(token))

    def lookup(self, token_digest: str) -> SessionRow | None:
        """The session row ``key_hash`` just read in this thread, else read from the store."""
        recent = getattr(self._current, "row", None)
        if recent is not None and recent[0] == token_digest:
            return recent[1]
        return self.store.session(token_digest)

    def key_hash(self, request: Request) -> str | None:
        """The key hash behind the request's session cookie (``oidc:<token digest>`` for a
        person); None without a live session.

        Raises AuthError for a cookie-authenticated unsafe request without the CSRF header.
        """
        self._current.row = None
        token = request.cookies.get(COOKIE)
        if not token or len(token) > 100:
            return None
        token_digest = digest(token)
        row = self.store.session(token_digest)
        if row is None:
            return None
        self._current.row = (token_digest, row)
        if request.method not in SAFE_METHODS and request.headers.get(CSRF_HEADER) != "1":
            raise AuthError("a signed-in browser request that changes something must carry the X-MCPMeter-CSRF header",
                            status=403, hint="send `X-MCPMeter-CSRF: 1` (the dashboard does), or use an API key")
        return "oidc:" + token_digest if row.owner.startswith("oidc:") else row.owner


def cookie_header(request: Request, token: str, max_age: int) -> str:
    secure = "; Secure" if request.url.scheme == "https" else ""
    return f"{COOKIE}={token}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"


def how(request: Request, sessions: Sessions) -> str:
    """How a request that authenticated did so: "key", "session" or "local"."""
    if presented_key(request) is not None:
        return "key"
    return "session" if sessions.key_hash(request) is not None else "local"


async def get_session(request: Request) -> Response:
    """Who the browser is: always 200, so a signed-out page makes no failed request."""
    collector = request.app.state.collector
    try:
        principal = collector.auth.authenticate(request, "read")
    except AuthError as exc:
        return JSONResponse({"signed_in": False, "reason": str(exc), "local_trust": collector.auth.local_trust},
                            headers={"Cache-Control": "no-store"})
    return JSONResponse({"signed_in": True, "via": how(request, collector.auth.sessions),
                         "project": principal.project.name, "scopes": sorted(principal.scopes)},
                        headers={"Cache-Control": "no-store"})


async def post_session(request: Request) -> Response:
    """Sign in: ``{"key": "mcpm_…"}`` with the CSRF header; answers with the session cookie."""
    collector = request.app.state.collector
    if request.headers.get(CSRF_HEADER) != "1":
        return error(403, "sign-in must carry the X-MCPMeter-CSRF header", "sign in from the dashboard's sign-in page")
    collector.auth.check_address(request)  # guessing keys here costs the address's rate limit too (429)
    body = await json_body(request)
    key = body.get("key") if isinstance(body, dict) else None
    if not isinstance(key, str) or not key.strip():
        return error(400, "send the key as JSON: {\"key\": \"mcpm_…\"}", "paste a read key; `mcpmeter keys create --scopes read` makes one")
    key_hash = keys.hash_key(key.strip())
    info = await run_in_threadpool(collector.store.key_by_hash, key_hash)
    if info is None:
        return error(401, "unknown API key", "check the key; `mcpmeter keys list` shows the keys")
    if not info.active(int(time.time() * 1000)):
        return error(401, f"API key {info.prefix}… has been revoked or has expired", "create a new one with `mcpmeter keys create --scopes read`")
    if not keys.allows(info.scopes, "read"):
        return error(403, f"API key {info.prefix}… cannot read usage (it has: {', '.join(sorted(info.scopes))})",
                     "use a key with the read (or admin) scope")
    token = await run_in_threadpool(collector.auth.sessions.create, info.project_id, key_hash)
    return JSONResponse({"signed_in": True, "via": "session", "project": info.project, "scopes": sorted(info.scopes)},
                        headers={"Set-Cookie": cookie_header(request, token, int(collector.auth.sessions.ttl)),
                                 "Cache-Control": "no-store"})


async def delete_session(request: Request) -> Response:
    """Sign out (needs the CSRF header, like every cookie-authenticated change)."""
    collector = request.app.state.collector
    if request.headers.get(CSRF_HEADER) != "1":
        return error(403, "sign-out must carry the X-MCPMeter-CSRF header", "sign out from the dashboard")
    await run_in_threadpool(collector.auth.sessions.drop, request.cookies.get(COOKIE))
    return JSONResponse({"signed_in": False}, headers={"Set-Cookie": cookie_header(request, "", 0)})


routes = [
    Route("/v1/session", get_session, methods=["GET"]),
    Route("/v1/session", post_session, methods=["POST"]),
    Route("/v1/session", delete_session, methods=["DELETE"]),
]

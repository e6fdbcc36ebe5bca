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

Sessions live in the collector's memory: after a restart people sign in again.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ... import keys
from ...exceptions import AuthError
from ..collector.admin_security import json_body
from ..collector.auth import presented_key
from ..collector.responses import error

COOKIE = "mcpmeter_session"
CSRF_HEADER = "x-mcpmeter-csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION_SECONDS = 7 * 86_400
MAX_SESSIONS = 10_000


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Sessions:
    """Session token digest -> (key hash, expiry). Thread-safe; bounded (oldest go first)."""

    def __init__(self, ttl: float = SESSION_SECONDS, max_sessions: int = MAX_SESSIONS) -> None:
        self.ttl = ttl
        self.max_sessions = max_sessions
        self._sessions: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, key_hash: str) -> str:
        token = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                for digest in [d for d, (_, exp) in self._sessions.items() if exp <= now]:
                    del self._sessions[digest]
                while len(self._sessions) >= self.max_sessions:  # dicts keep insertion order: oldest first
                    del self._sessions[next(iter(self._sessions))]
            self._sessions[_digest(token)] = (key_hash, now + self.ttl)
        return token

    def drop(self, token: str | None) -> None:
        if token:
            with self._lock:
                self._sessions.pop(_digest(token), None)

    def drop_key(self, key_hash: str) -> int:
        """End every session signed in with this key (it was revoked)."""
        with self._lock:
            gone = [d for d, (k, _) in self._sessions.items() if k == key_hash]
            for digest in gone:
                del self._sessions[digest]
        return len(gone)

    def key_hash(self, request: Request) -> str | None:
        """The key hash behind the request's session cookie; None without a live session.

        Raises AuthError for a cookie-authenticated unsafe request without the CSRF header.
        """
        token = request.cookies.get(COOKIE)
        if not token:
            return None
        entry = self._sessions.get(_digest(token))
        if entry is None or entry[1] <= time.time():
            return None
        if request.method not in SAFE_METHODS and request.headers.get(CSRF_HEADER) != "1":
            raise AuthError("a signed-in browser request that changes something must carry the X-MCPMeter-CSRF header",
                            status=403, hint="send `X-MCPMeter-CSRF: 1` (the dashboard does), or use an API key")
        return entry[0]


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
    token = collector.auth.sessions.create(key_hash)
    return JSONResponse({"signed_in": True, "via": "session", "project": info.project, "scopes": sorted(info.scopes)},
                        headers={"Set-Cookie": cookie_header(request, token, int(collector.auth.sessions.ttl)),
                                 "Cache-Control": "no-store"})


async def delete_session(request: Request) -> Response:
    """Sign out (needs the CSRF header, like every cookie-authenticated change)."""
    collector = request.app.state.collector
    if request.headers.get(CSRF_HEADER) != "1":
        return error(403, "sign-out must carry the X-MCPMeter-CSRF header", "sign out from the dashboard")
    collector.auth.sessions.drop(request.cookies.get(COOKIE))
    return JSONResponse({"signed_in": False}, headers={"Set-Cookie": cookie_header(request, "", 0)})


routes = [
    Route("/v1/session", get_session, methods=["GET"]),
    Route("/v1/session", post_session, methods=["POST"]),
    Route("/v1/session", delete_session, methods=["DELETE"]),
]

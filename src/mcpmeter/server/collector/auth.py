"""Who is asking: API keys (Bearer or X-API-Key), a signed-in browser (a key's or a
person's session), or a trusted loopback caller. Also where rate limits are applied.

A keyless caller is trusted only from a loopback address, addressed to a loopback name,
and not from another site's page (``mcpmeter.trust``): DNS rebinding and cross-site
requests cannot borrow the machine's trust.

Revocation is immediate: key lookups are cached only while the store's ``keys_version``
(bumped by a trigger whenever a key or an access grant is revoked, expires early, is
replaced or changed) stays the same, and every request reads that number, so a request
that starts after a revocation committed is refused by every collector on the store.

A key may be bound to servers (``mcpmeter keys create --server a --server b``): ingest paths
ask ``Principal.admitting`` / ``refused_server`` and reject what it submits for any other."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from starlette.requests import Request

from ... import keys
from ...events import Event
from ...exceptions import AuthError
from ...storage.base import AdminStore, KeyInfo, Project
from ...trust import is_loopback, key_in, keyless_refusal
from .security import RateLimited, RateLimits

if TYPE_CHECKING:
    from ..dashboard.sessions import Sessions
    from ..oidc import People

DEFAULT_PROJECT = "default"
_CACHE_SECONDS = 300.0  # a key's record is re-read at least this often (and at once when keys_version moves)
_UNKNOWN_SECONDS = 1.0  # an unknown key is looked up again after this long (a key created meanwhile works)


class Principal(NamedTuple):
    project: Project
    scopes: frozenset[str]
    key_id: int | None  # None: trusted loopback caller, or a person signed in with OpenID Connect
    actor: str = "loopback"  # for the audit log: "key:mcpm_AbC123", "oidc:<subject> <email>", "loopback"
    signing_secret: str | None = None  # the key requires signed submissions with this secret
    servers: frozenset[str] | None = None  # the key may submit only for these servers (None: any)

    def refused_server(self, server: str) -> str | None:
        """Why this key may not submit for ``server`` (None: it may)."""
        if self.servers is None or server in self.servers:
            return None
        return (f"this API key may submit only for server(s) {', '.join(sorted(self.servers))}, "
                f"not for {server[:80]!r} - `$.server`")

    def admitting(self, admit: Callable[[Event], str | None]) -> Callable[[Event], str | None]:
        """``admit`` (the name caps) behind this key's server binding: an event for another
        server is rejected with the reason (and takes nothing from the caps)."""
        if self.servers is None:
            return admit
        refused = self.refused_server

        def bound(event: Event) -> str | None:
            return refused(event.server) or admit(event)

        return bound


def presented_key(request: Request) -> str | None:
    return key_in(request.headers)


def _failed(reason: str, message: str, **kwargs) -> AuthError:
    exc = AuthError(message, **kwargs)
    exc.reason = reason  # type: ignore[attr-defined]
    return exc


class Authenticator:
    """``sessions``: a signed-in browser's cookie stands for its key's hash (or ``oidc:<id>``);
    ``people``: who ``oidc:<id>`` is (None when single sign-on is not configured)."""

    def __init__(self, store: AdminStore, local_trust: bool, limits: RateLimits | None = None,
                 sessions: Sessions | None = None, people: People | None = None) -> None:
        self.store = store
        self.local_trust = local_trust
        self.limits = limits
        self._cache: dict[str, tuple[float, KeyInfo | None, str | None]] = {}
        self._version: int | None = None
        self._projects: dict[int, Project] = {}
        self._default: Project | None = None
        self._lock = threading.Lock()
        self.last_used: dict[int, int] = {}  # key id -> ms; flushed to the store periodically
        self.checks: Counter[tuple[str, str]] = Counter()  # (scope, result) -> checks
        self.sessions = sessions
        self.people = people

    def authenticate(self, request: Request, scope: str) -> Principal:
        result = "error"
        try:
            principal = self._authenticate(request, scope)
            result = "ok" if principal.key_id is not None else ("person" if principal.actor.startswith("oidc:") else "loopback")
            return principal
        except AuthError as exc:
            result = getattr(exc, "reason", "malformed")
            raise
        except RateLimited:
            result = "rate_limited"
            raise
        finally:
            with self._lock:
                self.checks[(scope, result)] += 1

    def check_address(self, request: Request) -> None:
        """The per-address rate limit alone (for requests that authenticate another way, e.g. key sign-in)."""
        client = request.client.host if request.client else None
        if self.limits is not None and not is_loopback(client):
            self.limits.check_address(client)

    def check_counts(self) -> dict[tuple[str, str], int]:
        """Checks by (scope asked, result) since start: ``mcpmeter_auth_checks_total``."""
        with self._lock:
            return dict(self.checks)

    def _authenticate(self, request: Request, scope: str) -> Principal:
        client = request.client.host if request.client else None
        self.check_address(request)  # before any lookup: a flood of guesses costs the store nothing
        key = presented_key(request)
        key_hash = keys.hash_key(key) if key is not None else None
        if key_hash is None and self.sessions is not None:
            key_hash = self.sessions.key_hash(request)
            if key_hash is not None and key_hash.startswith("oidc:"):
                if self.people is None:
                    raise _failed("unknown_key", "single sign-on is not configured on this collector", hint="sign in again")
                return self.people.principal(key_hash[5:], scope, self._keys_version())
        if key_hash is None:
            if self.local_trust and is_loopback(client):
                refusal = keyless_refusal(request.headers)
                if refusal is not None:
                    raise _failed("not_local", refusal, hint="open it as http://127.0.0.1:<port> (or localhost), "
                                  "or send an API key as `Authorization: Bearer <key>`")
                if self._default is None:
                    self._default = self.store.ensure_project(DEFAULT_PROJECT)
                return Principal(self._default, frozenset(keys.SCOPES), None)
            raise _failed("missing_key", "an API key is required", hint="send it as `Authorization: Bearer <key>` or `X-API-Key: <key>`")
        info, secret = self._lookup(key_hash)
        now_ms = int(time.time() * 1000)
        if info is None:
            raise _failed("unknown_key", "unknown API key", hint="check MCPMETER_API_KEY; `mcpmeter keys list` shows the keys")
        if not info.active(now_ms):
            raise _failed("revoked", f"API key {info.prefix}… has been revoked or has expired", hint="create a new one with `mcpmeter keys create`")
        if not keys.allows(info.scopes, scope):
            raise _failed(
                "forbidden",
                f"API key {info.prefix}… lacks the `{scope}` scope (it has: {', '.join(sorted(info.scopes))})",
                status=403,
                hint=f"use a key created with --scopes {scope}",
            )
        project = self._project(info.project_id)
        if self.limits is not None:
            self.limits.check_key(info.id, info.prefix)
            self.limits.check_project(project.id, project.name)
        self.last_used[info.id] = now_ms
        return Principal(project, info.scopes, info.id, f"key:{info.prefix}", secret, info.servers)

    def _keys_version(self) -> int:
        """The store's keys version; a change empties the cache (one small read per request)."""
        version = self.store.keys_version()
        if version != self._version:
            with self._lock:
                self._cache.clear()
                self._version = version
        return version

    def _lookup(self, key_hash: str) -> tuple[KeyInfo | None, str | None]:
        version = self._keys_version()
        now = time.monotonic()
        cached = self._cache.get(key_hash)
        if cached and now - cached[0] < (_CACHE_SECONDS if cached[1] is not None else _UNKNOWN_SECONDS):
            return cached[1], cached[2]
        info = self.store.key_by_hash(key_hash)
        secret = self.store.signing_secret(info.id) if info is not None else None
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            if self._version == version:  # not if another thread saw a newer version meanwhile
                self._cache[key_hash] = (now, info, secret)
        return info, secret

    def _project(self, project_id: int) -> Project:
        project = self._projects.get(project_id)
        if project is None:
            project = self.store.project_by_id(project_id)
            if project is None:
                raise AuthError("the key's project no longer exists", status=403)
            self._projects[project_id] = project
        return project

    def flush_last_used(self) -> None:
        pending, self.last_used = self.last_used, {}
        self.store.touch_keys(pending)

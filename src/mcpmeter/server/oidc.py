"""People's sign-in to the dashboard with OpenID Connect; keys remain for machines.

The authorization code flow with PKCE (S256), a ``state`` bound to the browser by a
short-lived cookie, and a ``nonce``: ``GET /v1/oidc/login`` sends the browser to the
provider, ``GET /v1/oidc/callback`` takes the code back, exchanges it at the token
endpoint (with the client secret, when there is one), and verifies the ID token's
signature against the provider's JWKS (PyJWT; the algorithm must be one the provider
announces, and asymmetric), its issuer, audience, expiry and nonce. The person then gets
the dashboard's ordinary session cookie (``dashboard.sessions``, kept in the store), whose
row holds the person (subject, email, identities, the project they see) rather than a key's hash.

Sign-ins under way hold no state on the collector: the flow's data (state, nonce, PKCE
verifier, where to go next) travel in the flow cookie itself, HMAC-signed with a secret kept
in the store (``collector_secrets``), so any worker or collector can finish a sign-in another
one started, and nobody can evict anybody's pending sign-in. A state is taken once (the
store remembers it until the flow would have expired), and only with its browser's cookie:
someone who sees the callback URL can neither use it nor spoil it. ``/v1/oidc/login`` is
rate-limited per address (``LOGINS_PER_MINUTE``; loopback excepted, as for every limit).

Who may see what. A person's identities are ``sub:<subject>``, their email (lower-cased;
not when the provider says ``email_verified`` is false) and ``group:<name>`` for each
group in the ``MCPMETER_OIDC_GROUPS_CLAIM`` claim. Grants map identities to projects with
a role: ``viewer`` (read scope) or ``admin`` (admin scope), from ``MCPMETER_OIDC_ACCESS``
and from ``mcpmeter access grant``. A session sees one project at a time (the one asked
for at login, else the first granted). Grants are read again whenever the store's keys
version moves, so revoking access ends it at the person's next request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from .. import settings
from ..admin import ROLES, normalize_identity
from ..exceptions import AuthError, ConfigError, SignInError

if TYPE_CHECKING:
    from ..storage.base import AdminStore
    from .collector.app import Collector
    from .dashboard.sessions import Sessions

FLOW_COOKIE = "mcpmeter_oidc"
FLOW_SECONDS = 600
LOGINS_PER_MINUTE = 20  # per source address, per collector process
MAX_GRANT_CACHE = 10_000
ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})


def _parse_access(raw: str | None) -> dict[str, dict[str, str]]:
    if not raw:
        return {}
    hint = 'e.g. {"alice@example.com": {"weblab": "admin"}, "group:analysts": {"weblab": "viewer"}}'
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"MCPMETER_OIDC_ACCESS is not JSON: {exc}", hint=hint) from None
    if not isinstance(data, dict):
        raise ConfigError("MCPMETER_OIDC_ACCESS must be a JSON object", hint=hint)
    out: dict[str, dict[str, str]] = {}
    for identity, projects in data.items():
        if not isinstance(projects, dict) or any(role not in ROLES for role in projects.values()):
            raise ConfigError(f"MCPMETER_OIDC_ACCESS[{identity!r}] must map project names to viewer or admin", hint=hint)
        out[normalize_identity(identity)] = {str(p): r for p, r in projects.items()}
    return out


@dataclass
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: str | None
    redirect_url: str
    scopes: str = "openid email profile"
    groups_claim: str = "groups"
    access: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def from_settings(cls) -> OidcConfig | None:
        issuer = settings.get("MCPMETER_OIDC_ISSUER")
        if not issuer:
            return None
        client_id, redirect = settings.get("MCPMETER_OIDC_CLIENT_ID"), settings.get("MCPMETER_OIDC_REDIRECT_URL")
        if not client_id or not redirect:
            raise ConfigError("MCPMETER_OIDC_ISSUER is set but MCPMETER_OIDC_CLIENT_ID or MCPMETER_OIDC_REDIRECT_URL is not",
                              hint="register the collector at the provider with redirect URL https://<collector>/v1/oidc/callback")
        scopes = settings.get("MCPMETER_OIDC_SCOPES")
        if "openid" not in scopes.split():
            scopes = "openid " + scopes
        return cls(issuer, client_id, settings.get("MCPMETER_OIDC_CLIENT_SECRET"), redirect, scopes,
                   settings.get("MCPMETER_OIDC_GROUPS_CLAIM"), _parse_access(settings.get("MCPMETER_OIDC_ACCESS")))


class Provider:
    """The provider's discovery document and keys, fetched when first needed and cached."""

    def __init__(self, config: OidcConfig) -> None:
        self.config = config
        self._meta: dict[str, Any] | None = None
        self._jwks: Any = None
        self._jwks_at = 0.0

    async def _get(self, url: str) -> dict[str, Any]:
        import httpx

        try:
            async with httpx.AsyncClient(timeout=10) as client:
                response = await client.get(url, headers={"Accept": "application/json"})
            response.raise_for_status()
            data = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise SignInError(f"the identity provider did not answer {url}: {exc}") from None
        if not isinstance(data, dict):
            raise SignInError(f"{url} did not answer with a JSON object")
        return data

    async def metadata(self) -> dict[str, Any]:
        if self._meta is None:
            meta = await self._get(self.config.issuer.rstrip("/") + "/.well-known/openid-configuration")
            if str(meta.get("issuer", "")).rstrip("/") != self.config.issuer.rstrip("/"):
                raise SignInError(f"the provider's discovery document names issuer {meta.get('issuer')!r}, "
                                  f"not {self.config.issuer!r}")
            for needed in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(meta.get(needed), str):
                    raise SignInError(f"the provider's discovery document has no {needed}")
            self._meta = meta
        return self._meta

    async def keys(self, refresh: bool = False) -> Any:
        import jwt

        now = time.monotonic()
        if self._jwks is None or (refresh and now - self._jwks_at > 10):  # unknown kid: re-read, at most every 10 s
            data = await self._get((await self.metadata())["jwks_uri"])
            try:
                self._jwks = jwt.PyJWKSet.from_dict(data)
            except jwt.PyJWTError as exc:
                raise SignInError(f"the provider's JWKS is unusable: {exc}") from None
            self._jwks_at = now
        return self._jwks

    async def exchange(self, code: str, verifier: str) -> dict[str, Any]:
        import httpx

        meta = await self.metadata()
        c = self.config
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": c.redirect_url, "code_verifier": verifier}
        auth: httpx.Auth | None = None
        if c.client_secret:
            methods = meta.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
            if "client_secret_basic" in methods:
                auth = httpx.BasicAuth(c.client_id, c.client_secret)
            else:
                form.update(client_id=c.client_id, client_secret=c.client_secret)
        else:
            form["client_id"] = c.client_id
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                response = await client.post(meta["token_endpoint"], data=form, headers={"Accept": "application/json"},
                                             auth=httpx.USE_CLIENT_DEFAULT if auth is None else auth)
            answer = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise SignInError(f"the provider's token endpoint failed: {exc}") from None
        if response.status_code != 200 or not isinstance(answer, dict) or not isinstance(answer.get("id_token"), str):
            detail = answer.get("error_description") or answer.get("error") if isinstance(answer, dict) else None
            raise SignInError(f"the provider refused the code ({response.status_code}: {detail or 'no ID token'})")
        return answer

    async def verify(self, id_token: str, nonce: str) -> dict[str, Any]:
        import jwt

        meta = await self.metadata()
        announced = set(meta.get("id_token_signing_alg_values_supported") or ["RS256"])
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError as exc:
            raise SignInError(f"the ID token is malformed: {exc}") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ASYMMETRIC or alg not in announced:
            raise SignInError(f"the ID token is signed with {alg!r}, which is not accepted")
        key = None
        for refresh in (False, True):
            jwks = await self.keys(refresh)
            candidates = [k for k in jwks.keys if kid is None or k.key_id == kid]
            if candidates:
                key = candidates[0]
                break
        if key is None:
            raise SignInError("the ID token is signed with a key the provider does not publish")
        try:
            claims = jwt.decode(id_token, key.key, algorithms=[alg], audience=self.config.client_id,
                                issuer=meta["issuer"], leeway=60, options={"require": ["exp", "iat", "iss", "aud", "sub"]})
        except jwt.PyJWTError as exc:
            raise SignInError(f"the ID token does not verify: {exc}") from None
        if not secrets.compare_digest(str(claims.get("nonce", "")), nonce):
            raise SignInError("the ID token's nonce does not match this sign-in")
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != self.config.client_id:
            raise SignInError("the ID token was issued to another client (azp)")
        return claims


def identities(claims: dict[str, Any], groups_claim: str) -> list[str]:
    found = [f"sub:{claims['sub']}"]
    email = claims.get("email")
    if isinstance(email, str) and email and claims.get("email_verified", True) is not False:
        found.append(email.lower())
    groups = claims.get(groups_claim)
    if isinstance(groups, list):
        found.extend(f"group:{g}" for g in groups if isinstance(g, str) and g)
    return found


@dataclass
class Person:
    subject: str
    email: str | None
    identities: list[str]
    project: str  # the project this session sees

    @property
    def actor(self) -> str:
        return f"oidc:{self.subject}" + (f" {self.email}" if self.email else "")

    def dumps(self) -> str:
        return json.dumps({"sub": self.subject, "email": self.email, "ids": self.identities, "project": self.project})

    @classmethod
    def loads(cls, text: str | None) -> Person | None:
        try:
            d = json.loads(text or "")
            return cls(str(d["sub"]), d.get("email"), [str(i) for i in d["ids"]], str(d["project"]))
        except (ValueError, KeyError, TypeError):
            return None


class People:
    """Who a person's session stands for (its row in the store), and what they may see.

    Grants are cached per session while the store's keys version stays the same (a grant
    change moves it), so revoking access ends it at the person's next request."""

    def __init__(self, store: AdminStore, config: OidcConfig, sessions: Sessions) -> None:
        self.store = store
        self.config = config
        self.sessions = sessions
        self._grants: dict[tuple[str, str], tuple[int, dict[str, tuple[Any, str]]]] = {}
        self._lock = threading.Lock()

    def grants(self, ids: list[str]) -> dict[str, tuple[Any, str]]:
        """Project name -> (Project, role), the highest role any identity has there (blocking)."""
        roles: dict[str, str] = {}
        for identity in ids:
            for project, role in self.config.access.get(identity, {}).items():
                roles[project] = max(roles.get(project, role), role, key=list(ROLES).index)
        for _, project, _, role in self.store.access_for(ids):
            roles[project] = max(roles.get(project, role), role, key=list(ROLES).index)
        out = {}
        for name, role in roles.items():
            found = self.store.project_by_name(name)
            if found is not None:
                out[name] = (found, role)
        return out

    def person(self, token_digest: str) -> Person | None:
        row = self.sessions.lookup(token_digest)
        return Person.loads(row.person) if row is not None else None

    def _current_grants(self, token_digest: str, person: Person, version: int) -> dict[str, tuple[Any, str]]:
        key = (token_digest, person.subject)
        cached = self._grants.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        grants = self.grants(person.identities)
        with self._lock:
            if len(self._grants) >= MAX_GRANT_CACHE:
                self._grants.clear()
            self._grants[key] = (version, grants)
        return grants

    def principal(self, token_digest: str, scope: str, version: int):
        from .. import keys
        from .collector.auth import Principal

        person = self.person(token_digest)
        if person is None:
            raise AuthError("your sign-in has ended (you signed out, or it expired)", hint="sign in again")
        grant = self._current_grants(token_digest, person, version).get(person.project)
        if grant is None:
            raise AuthError(f"{person.email or person.subject} no longer has access to project {person.project!r}", 403,
                            "ask an admin: `mcpmeter access grant EMAIL --project P --role viewer`")
        project, role = grant
        scopes = ROLES[role]
        if not keys.allows(scopes, scope):
            raise AuthError(f"{person.email or person.subject} is a {role} of {project.name!r}; this needs the `{scope}` scope",
                            403, "ask an admin for the admin role")
        return Principal(project, scopes, None, person.actor)


class Flows:
    """Sign-ins under way, held by the browser: the flow cookie carries the flow's data,
    signed with the store's ``oidc-flow`` secret; valid for ``FLOW_SECONDS``, for one state,
    once (the store remembers the states taken until they expire: ``used_once``)."""

    def __init__(self, store: AdminStore) -> None:
        self.store = store
        self._secret: bytes | None = None

    def _key(self) -> bytes:
        if self._secret is None:
            self._secret = self.store.collector_secret("oidc-flow").encode()
        return self._secret

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key(), payload.encode(), hashlib.sha256).digest())

    def start(self, **data: Any) -> tuple[str, str]:
        """A new flow (blocking: the secret may be read): its ``state``, and the cookie value."""
        state = secrets.token_urlsafe(24)
        payload = _b64(json.dumps({**data, "state": state, "expires": int(time.time()) + FLOW_SECONDS},
                                  separators=(",", ":")).encode())
        return state, f"{payload}.{self._sign(payload)}"

    def finish(self, state: str, cookie: str | None) -> dict[str, Any]:
        """The flow's data, when the cookie is this browser's, for this state, and not expired (blocking)."""
        payload, _, signature = (cookie or "").partition(".")
        if not payload or not signature:
            raise SignInError("this sign-in was started in another browser, or its cookie expired; "
                              "start again from the sign-in page")
        if not hmac.compare_digest(self._sign(payload), signature):
            raise SignInError("this sign-in's cookie was not made by this collector; start again")
        try:
            flow = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except ValueError:
            raise SignInError("this sign-in's cookie is unreadable; start again") from None
        if not isinstance(flow, dict) or not hmac.compare_digest(str(flow.get("state", "")), state):
            raise SignInError("this sign-in was started in another browser; start again from the sign-in page")
        expires = int(flow.get("expires", 0))
        if expires <= time.time():
            raise SignInError("this sign-in has expired; start again")
        if not self.store.take_once("oidc-state:" + hashlib.sha256(state.encode()).hexdigest(), expires * 1000):
            raise SignInError("this sign-in was already completed (a replayed answer); start again")
        return flow


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def routes(collector: Collector) -> list:
    """The ``/v1/oidc/*`` routes; sign-in routes only when an issuer is configured (``collector.people``)."""
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
    from starlette.routing import Route

    from .collector.admin_security import json_body
    from .collector.auth import is_loopback
    from .collector.security import TokenBuckets
    from .dashboard.sessions import cookie_header, safe_next

    config, people, sessions = collector.config.oidc, collector.people, collector.sessions

    async def status(request: Request) -> Response:
        return JSONResponse({"enabled": config is not None, "login": "/v1/oidc/login" if config else None})

    if config is None or people is None:
        return [Route("/v1/oidc", status, methods=["GET"])]
    provider, flows = Provider(config), Flows(collector.store)
    logins = TokenBuckets(LOGINS_PER_MINUTE)

    def failed(message: str, status_code: int = 400, headers: dict[str, str] | None = None) -> Response:
        page = (f"<!doctype html><meta charset=utf-8><title>Sign-in failed · mcpmeter</title>"
                f"<h1>Sign-in failed</h1><p>{html.escape(message)}</p><p><a href=\"/signin\">Back to sign-in</a></p>")
        return HTMLResponse(page, status_code=status_code, headers={"Cache-Control": "no-store",
                                                                   "Content-Security-Policy": "default-src 'none'",
                                                                   **(headers or {})})

    async def login(request: Request) -> Response:
        address = request.client.host if request.client else None
        if address and not is_loopback(address):
            wait = logins.take(address)
            if wait:
                return failed(f"too many sign-ins from {address}: the limit is {LOGINS_PER_MINUTE} per minute; "
                              "try again shortly", 429, {"Retry-After": str(max(1, int(wait + 0.999)))})
        try:
            meta = await provider.metadata()
        except SignInError as exc:
            return failed(str(exc), 502)
        verifier, challenge = _pkce()
        nonce = secrets.token_urlsafe(24)
        project = request.query_params.get("project")
        state, binding = await run_in_threadpool(flows.start, nonce=nonce, verifier=verifier,
                                                 next=safe_next(request.query_params.get("next")),
                                                 project=project[:200] if project else None)
        query = urlencode({"response_type": "code", "client_id": config.client_id, "redirect_uri": config.redirect_url,
                           "scope": config.scopes, "state": state, "nonce": nonce, "code_challenge": challenge,
                           "code_challenge_method": "S256"})
        sep = "&" if "?" in meta["authorization_endpoint"] else "?"
        secure = "; Secure" if request.url.scheme == "https" else ""
        # SameSite=Lax: the provider sends the browser back with a top-level GET from its own site.
        cookie = f"{FLOW_COOKIE}={binding}; Path=/v1/oidc; Max-Age={FLOW_SECONDS}; HttpOnly; SameSite=Lax{secure}"
        return RedirectResponse(meta["authorization_endpoint"] + sep + query, status_code=303,
                                headers={"Set-Cookie": cookie, "Cache-Control": "no-store"})

    async def callback(request: Request) -> Response:
        q = request.query_params
        if q.get("error"):
            return failed(f"the identity provider said: {q.get('error_description') or q.get('error')}", 403)
        code, state = q.get("code"), q.get("state")
        if not code or not state:
            return failed("the provider's answer has no code or state")
        try:
            flow = await run_in_threadpool(flows.finish, state, request.cookies.get(FLOW_COOKIE))
            meta = await provider.metadata()
            if q.get("iss") is not None and q["iss"] != meta["issuer"]:  # RFC 9207: a mix-up attack
                raise SignInError("the answer comes from another issuer")
            tokens = await provider.exchange(code, flow["verifier"])
            claims = await provider.verify(tokens["id_token"], flow["nonce"])
        except SignInError as exc:
            return failed(str(exc))
        ids = identities(claims, config.groups_claim)
        grants = await run_in_threadpool(people.grants, ids)
        email = claims.get("email") if isinstance(claims.get("email"), str) else None
        if not grants:
            return failed(f"{email or claims['sub']} has no access to any project here; ask an admin to run "
                          f"`mcpmeter access grant {email or 'sub:' + str(claims['sub'])} --project P --role viewer`", 403)
        asked = flow.get("project")
        project = asked if isinstance(asked, str) and asked in grants else sorted(grants)[0]
        person = Person(str(claims["sub"]), email, ids, project)
        token = await run_in_threadpool(sessions.create, grants[project][0].id, "oidc:" + person.subject, person.dumps())
        headers = [("Set-Cookie", cookie_header(request, token, int(sessions.ttl))),
                   ("Set-Cookie", f"{FLOW_COOKIE}=; Path=/v1/oidc; Max-Age=0; HttpOnly; SameSite=Lax"),
                   ("Cache-Control", "no-store")]
        response = RedirectResponse(safe_next(flow.get("next")), status_code=303)
        for name, value in headers:
            response.headers.append(name, value)
        return response

    async def switch_project(request: Request) -> Response:
        """``POST /v1/oidc/project {"project": NAME}`` (with the CSRF header): see another granted project."""
        key_hash = sessions.key_hash(request)
        token_digest = key_hash[5:] if key_hash and key_hash.startswith("oidc:") else None
        person = people.person(token_digest) if token_digest else None
        if token_digest is None or person is None:
            return JSONResponse({"error": "sign in with single sign-on first", "hint": "/v1/oidc/login"}, status_code=401)
        body = await json_body(request)
        name = body.get("project") if isinstance(body, dict) else None
        grants = await run_in_threadpool(people.grants, person.identities)
        if name not in grants:
            return JSONResponse({"error": f"no access to project {name!r}", "projects": sorted(grants)}, status_code=403)
        person.project = name
        await run_in_threadpool(collector.store.update_session, token_digest, grants[name][0].id, person.dumps())
        return JSONResponse({"project": name, "projects": sorted(grants)})

    return [
        Route("/v1/oidc", status, methods=["GET"]),
        Route("/v1/oidc/login", login, methods=["GET"]),
        Route("/v1/oidc/callback", callback, methods=["GET"]),
        Route("/v1/oidc/project", switch_project, methods=["POST"]),
    ]

"""Shared by the security tests: routes of the real app, signed requests, counting what a store holds."""

from __future__ import annotations

import gzip
import json
import re
import time
from collections.abc import Iterator
from typing import Any

from starlette.routing import Route

from mcpmeter.signing import signature_headers

# Answer without any credentials (health, the API description, sign-in itself, static files).
PUBLIC = {
    ("GET", "/health"), ("GET", "/ready"), ("GET", "/openapi.json"), ("GET", "/signin"), ("HEAD", "/signin"),
    ("GET", "/v1/session"), ("POST", "/v1/session"), ("DELETE", "/v1/session"), ("GET", "/v1/oidc"),
    ("GET", "/v1/oidc/login"), ("GET", "/v1/oidc/callback"), ("POST", "/v1/oidc/project"),
}
INGEST_PATHS = {"/v1/events", "/v1/traces", "/v1/measurements", "/v1/server-events", "/metrics",  # POST /metrics: the MCP gateway API
                "/functions/v1/metrics-collect", "/functions/v1/usage-track"}  # the MCP directory API
PAGES = {"/", "/tools/{tool}", "/admin"}  # HTML pages: a refusal is a redirect to /signin


def required_scope(method: str, path: str) -> str | None:
    """The scope a route needs, by the rules the collector follows; None: public.

    A route that none of the rules covers fails the test that uses this, so a new
    endpoint cannot be added without deciding who may call it."""
    if method == "HEAD":
        method = "GET"  # Starlette answers HEAD wherever it answers GET
    if (method, path) in PUBLIC or path.startswith("/static"):
        return None
    if method == "POST" and path in INGEST_PATHS:
        return "ingest"
    if path.startswith("/v1/admin/") or path == "/admin":
        return "admin"
    if method in ("GET", "HEAD") and (path.startswith("/v1/usage/") or path in ("/metrics", "/v1/live", "/v1/alerts", "/functions/v1/metrics-fetch")
                                      or path in PAGES):
        return "read"
    raise AssertionError(f"no scope rule covers {method} {path}: add it to required_scope (and enforce it)")


def app_routes(app) -> Iterator[tuple[str, str]]:
    """(method, path) of every route, parameters written without their convertors ({tool}, not {tool:path})."""
    for route in app.routes:
        if isinstance(route, Route):
            for method in sorted(route.methods or ()):
                yield method, re.sub(r":\w+}", "}", route.path)


def concrete(path: str) -> str:
    """A request path for a route path: parameters filled with harmless values."""
    return re.sub(r"\{[^}]+\}", "nothing-here", path)


def signed(secret: str, body: bytes, now: float | None = None, **extra: str) -> dict[str, str]:
    return {**signature_headers(secret, body, now), **extra}


def gz(events: Any) -> bytes:
    return gzip.compress(json.dumps(events).encode())


def wait_until(predicate, timeout: float, what: str, every: float = 0.05):
    """Poll ``predicate`` until it returns something truthy (returned), or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)

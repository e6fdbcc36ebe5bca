"""Changes a web page could have made a browser send, refused before any handler runs.

For every POST, PUT, PATCH and DELETE, whoever the caller is (``mcpmeter.trust``):

- ``Origin`` (or ``Sec-Fetch-Site: cross-site``) names another site: 403. The collector
  never answers CORS preflights, so its own pages are the only ones allowed to change
  anything from a browser.
- A request without an API key header (served by loopback trust or a session cookie) whose
  body is not declared JSON: 415. ``text/plain``, form types and a body without
  ``Content-Type`` are what a cross-site form or "simple" ``fetch`` can send; a page cannot
  add ``Authorization`` or ``X-API-Key`` without a CORS preflight, so a request that carries
  its key is left to its handler's own rules (e.g. the gateway-compatible ``POST /metrics``
  answers malformed bodies as FastAPI does). ``/v1/traces`` also takes OTLP's
  ``application/x-protobuf``; gzip is a ``Content-Encoding``, not a type, so gzip JSON
  (the SDK's batches) is ``application/json`` too.

Refused requests are answered without reading their body, and nothing is stored.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from ...trust import UNSAFE_METHODS, cross_site, is_json_type
from .otlp import PROTOBUF
from .responses import error

OTHER_TYPES = {"/v1/traces": (PROTOBUF,)}  # paths that take a body that is not JSON, and which types


def has_body(headers: Headers) -> bool:
    length = headers.get("content-length")
    if length is not None:
        return length.strip() not in ("0", "")
    return "transfer-encoding" in headers


class CrossSiteGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in UNSAFE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        why = cross_site(headers)
        if why is not None:
            response = error(403, f"a change to the collector is refused: {why}",
                             "change things from the collector's own dashboard, the CLI or with an API key")
        elif (has_body(headers) and "authorization" not in headers and "x-api-key" not in headers
              and not is_json_type(headers.get("content-type"), OTHER_TYPES.get(scope["path"], ()))):
            given = headers.get("content-type")
            response = error(415, f"the body must be JSON; Content-Type {given[:100]!r} is not accepted" if given
                             else "the body must be JSON, and declared so: Content-Type is missing",
                             "send `Content-Type: application/json` (a request with an API key may say otherwise)"
                             + (" (or application/x-protobuf for OTLP)" if scope["path"] in OTHER_TYPES else ""))
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)

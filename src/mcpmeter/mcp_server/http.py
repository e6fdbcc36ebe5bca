"""Who may ask `mcpmeter mcp --http`: the usage data, error messages included, is the project's.

Every HTTP request to the server passes ``KeyGuard`` first:

- With a key (``Authorization: Bearer <key>`` or ``X-API-Key``): a store source accepts an
  active key of the project it answers for with the ``read`` (or ``admin``) scope, looked
  up in the store on every request; a collector source asks the collector (a key it accepted
  is trusted for 10 s) and then reads the answers with that very key, so the collector's own
  scopes and projects apply. Any ``Host`` is fine: a key cannot be borrowed by a web page.
- Without a key: only while the server listens on a loopback address (the default,
  127.0.0.1), and only a caller on this machine that addressed a loopback name (``Host``:
  localhost, 127.x, [::1]) and is not a page of another site (a page served from this
  machine, such as the MCP Inspector, is fine). The answers then come from the store, or
  from the collector with the key given to ``mcpmeter mcp`` (or saved by a local
  ``mcpmeter serve``). Listening beyond loopback (``--host 0.0.0.0``), every request needs
  a key, from this machine too (a tunnel or a local reverse proxy looks local).

Refusals are 401 (with ``WWW-Authenticate: Bearer``) or 403, as JSON ``{"error", "hint"}``.
``serve_http`` refuses to listen on a non-loopback address when no client could present an
acceptable key (a store without a read key of the project).
"""

from __future__ import annotations

import anyio.to_thread
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ..exceptions import AuthError, ConfigError, MCPMeterError
from ..trust import is_loopback, key_in, keyless_refusal
from .sources import CALLER_KEY, KEY_HINT, Source


def _refusal(status: int, message: str, hint: str | None) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message, **({"hint": hint} if hint else {})}, status_code=status, headers=headers)


class KeyGuard:
    def __init__(self, app: ASGIApp, source: Source, host: str) -> None:
        self.app = app
        self.source = source
        self.host = host
        self.keyless = is_loopback(host)  # listening on this machine only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            key = key_in(headers)
            if key is None:
                self._keyless(scope, headers)
            else:
                await anyio.to_thread.run_sync(self.source.check_key, key)
        except AuthError as exc:
            await _refusal(exc.status, str(exc), exc.hint)(scope, receive, send)
            return
        except MCPMeterError as exc:  # the collector cannot be reached to check the key
            await _refusal(503, str(exc), exc.hint)(scope, receive, send)
            return
        token = CALLER_KEY.set(key)
        try:
            await self.app(scope, receive, send)
        finally:
            CALLER_KEY.reset(token)

    def _keyless(self, scope: Scope, headers: Headers) -> None:
        if not self.keyless:
            raise AuthError(f"an API key is required: this server listens beyond this machine (--host {self.host})", hint=KEY_HINT)
        client = scope.get("client")
        if not is_loopback(client[0] if client else None):
            raise AuthError("an API key is required from another machine", hint=KEY_HINT)
        refusal = keyless_refusal(headers, allow_loopback_origins=True)
        if refusal is not None:
            raise AuthError(refusal, hint="connect to http://127.0.0.1:<port>/mcp (or localhost), or " + KEY_HINT)


def check_listen(host: str, source: Source) -> None:
    """Refuse to listen beyond this machine when nobody could authenticate."""
    if is_loopback(host):
        return
    why = source.unauthenticated()
    if why is not None:
        raise ConfigError(f"--host {host} would serve usage data to anyone who reaches the port, and {why}",
                          hint="create one (`mcpmeter keys create --name agent --scopes read --project NAME`) for clients "
                               "to send as `Authorization: Bearer <key>`, or listen on --host 127.0.0.1")

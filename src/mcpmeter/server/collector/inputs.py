"""What every request's URL must be before it is routed: no NUL character.

A NUL (``%00``) in a query parameter or a path segment is text that no store keeps
(PostgreSQL refuses it outright, which answered 503 for ``?server=a%00b``), and no name
mcpmeter stores can contain one. It is refused here, for every route at once, with 400.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from .responses import error


class RefuseNul:
    """ASGI middleware: 400 for an HTTP request whose decoded path or query string holds a NUL."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and ("\x00" in scope["path"] or b"%00" in scope["query_string"]):
            response = error(400, "the URL has a NUL character (%00) in its path or a query parameter",
                             "remove it: no name mcpmeter stores contains one")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

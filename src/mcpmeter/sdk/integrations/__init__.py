"""Framework integrations: ``meter.instrument(server)`` for mcp 2.x and FastMCP servers.

One module per framework (``mcp``, ``fastmcp``), each imported only when a server of that
kind is instrumented, so ``from mcpmeter import Meter`` needs neither installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...exceptions import ConfigError

if TYPE_CHECKING:
    from ..meter import Meter
    from ._common import UserResolver


def _framework(server: Any) -> str | None:
    for cls in type(server).__mro__:
        module = cls.__module__ or ""
        if module.startswith("fastmcp.") and cls.__name__ == "FastMCP":
            return "fastmcp"
        if module.startswith("mcp.server.") and cls.__name__ in ("MCPServer", "Server"):
            return "mcp"
    return None


def _fastmcp_version() -> str | None:
    import fastmcp

    return getattr(fastmcp, "__version__", None)


def instrument(meter: Meter, server: Any, *, user: UserResolver | None = None, user_header: str | None = None) -> Any:
    """Record every tools/call, tools/list and initialize/server/discover ``server`` handles.

    ``user``: a callable ``(request_context) -> str | None`` naming the user of a request
    (it receives the mcp ``ServerRequestContext``, or None for a programmatic call).
    ``user_header``: on HTTP, the request header to take the user from when no
    authenticated token names one. Returns ``server``, unchanged apart from the middleware.
    """
    framework = _framework(server)
    if framework is None:
        raise ConfigError(
            f"meter.instrument() does not know {type(server).__module__}.{type(server).__qualname__}",
            hint="pass an mcp 2.x Server or MCPServer, or a FastMCP server; decorate plain functions with @meter.tool",
        )
    if user is not None and not callable(user):
        raise ConfigError("instrument(user=...) must be a callable taking the request context",
                          hint="for a fixed user, set MCPMETER_USER or Meter(user=...)")
    if meter.disabled:
        return server
    name = getattr(server, "name", None)
    if not meter._server_named and isinstance(name, str) and name:
        meter.server = name[:200]
    version = getattr(server, "version", None)
    if framework == "fastmcp" and version == _fastmcp_version():
        version = None  # FastMCP reports its own version for servers that set none
    if meter.server_version is None and isinstance(version, str) and version:
        meter.server_version = version[:200]
    if framework == "fastmcp":
        from .fastmcp import install
    else:
        from .mcp import install
    return install(meter, server, user=user, user_header=user_header)


__all__ = ["instrument"]

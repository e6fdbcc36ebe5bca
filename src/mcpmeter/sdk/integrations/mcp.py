"""mcp 2.x: ``Server`` (low level) and ``MCPServer``, through the SDK's own middleware seam.

``Server.middleware`` wraps every inbound request - ``initialize``, ``server/discover``,
lookup, params validation and the handler - and hands each layer the wire-shaped result
dict. The meter's middleware only observes: it returns exactly what ``call_next``
returned and re-raises exactly what it raised, so schemas and results are untouched.

For ``MCPServer`` a tool's exception never reaches middleware (the server turns it into
an ``isError`` result); wrapping the instance's public ``call_tool`` lets the middleware
name the real exception type instead of just ``tool_error``.
"""

from __future__ import annotations

import contextvars
import functools
from typing import TYPE_CHECKING, Any

from ...protocol import (
    HANDSHAKE_METHODS,
    INITIALIZE,
    INITIALIZE_METHOD,
    LIST_TOOLS,
    METHOD_ATTRIBUTE,
    TOOL_CALL,
    TOOL_ERROR,
    TOOLS_CALL,
    TOOLS_LIST,
)
from ._common import Recorder, UserResolver, _perf, _wall, failure_of, first_text, json_size, tool_failure, tool_name

if TYPE_CHECKING:
    from ..meter import Meter

# The exception a wrapped MCPServer.call_tool raised during the current request.
_tool_exception: contextvars.ContextVar[BaseException | None] = contextvars.ContextVar(
    "mcpmeter_tool_exception", default=None
)


class MeterMiddleware:
    """A ``ServerMiddleware`` recording tools/call, tools/list, initialize and server/discover."""

    __slots__ = ("recorder",)

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    @property
    def meter(self) -> Meter:
        return self.recorder.meter

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        method = ctx.method
        if method == TOOLS_CALL:
            return await self._tool_call(ctx, call_next)
        if method == TOOLS_LIST:
            kind = LIST_TOOLS
        elif method in HANDSHAKE_METHODS:
            kind = INITIALIZE
        else:
            return await call_next(ctx)
        wall, start = _wall(), _perf()
        try:
            result = await call_next(ctx)
        except BaseException as exc:
            error_type, message = failure_of(exc)
            self._emit(kind, wall, start, ctx, ok=False, error_type=error_type, error_message=message,
                       attributes={METHOD_ATTRIBUTE: method} if kind == INITIALIZE else None)
            raise
        duration = _perf() - start
        try:
            attributes: dict[str, Any] | None = None
            if kind == LIST_TOOLS:
                tools = result.get("tools") if isinstance(result, dict) else None
                attributes = {"tools": len(tools)} if isinstance(tools, list) else None
            else:
                attributes = {METHOD_ATTRIBUTE: method}
                if method == INITIALIZE_METHOD and isinstance(result, dict):
                    # the negotiated version (the connection commits it after the chain returns)
                    attributes["negotiated_version"] = result.get("protocolVersion")
            self.recorder.emit(kind, wall, duration, self.recorder.context_fields(ctx, ctx.params),
                               ok=True, result_bytes=json_size(result), attributes=attributes)
        except Exception as exc:
            _internal(exc)
        return result

    async def _tool_call(self, ctx: Any, call_next: Any) -> Any:
        wall, start = _wall(), _perf()
        try:
            result = await call_next(ctx)
        except BaseException as exc:
            duration = _perf() - start
            _tool_exception.set(None)
            try:
                self._tool_event(ctx, wall, duration, None, False, *failure_of(exc))
            except Exception as inner:
                _internal(inner)
            raise
        duration = _perf() - start
        try:
            raised = _tool_exception.get()
            if raised is not None:
                _tool_exception.set(None)
            if isinstance(result, dict) and result.get("isError") is True:
                error_type, message = TOOL_ERROR, None
                if raised is not None:
                    error_type, message = tool_failure(raised)
                self._tool_event(ctx, wall, duration, result, False, error_type,
                                 message or first_text(result.get("content")))
            else:
                self._tool_event(ctx, wall, duration, result, True, None, None)
        except Exception as exc:
            _internal(exc)
        return result

    def _tool_event(self, ctx: Any, wall: float, duration: float, result: Any, ok: bool, error_type: str | None,
                    message: str | None) -> None:
        recorder = self.recorder
        params = ctx.params or {}
        arguments = params.get("arguments")
        attributes: dict[str, Any] | None = None
        if recorder._capture_args and arguments:
            attributes = {"arguments": recorder.capture(arguments)}
        if recorder._capture_results and result is not None:
            content = {k: result[k] for k in ("structuredContent", "content") if k in result}
            attributes = {**(attributes or {}), "result": recorder.capture(content)}
        recorder.emit(
            TOOL_CALL, wall, duration, recorder.context_fields(ctx, params),
            tool=tool_name(params.get("name")), ok=ok, error_type=error_type, error_message=message,
            args_bytes=json_size(arguments if arguments is not None else {}),
            result_bytes=None if result is None else json_size(result), attributes=attributes,
        )

    def _emit(self, kind: str, wall: float, start: float, ctx: Any, **kw: Any) -> None:
        try:
            self.recorder.emit(kind, wall, _perf() - start, self.recorder.context_fields(ctx, ctx.params), **kw)
        except Exception as exc:
            _internal(exc)


def _internal(exc: BaseException) -> None:
    from ..internal import internal_error

    internal_error("recording an instrumented request failed", exc)


def _wrap_call_tool(server: Any) -> None:
    """Remember the exception behind an ``isError`` result (MCPServer catches it itself)."""
    original = server.call_tool
    if getattr(original, "__mcpmeter__", False):
        return

    @functools.wraps(original)
    async def call_tool(*args: Any, **kwargs: Any) -> Any:
        try:
            return await original(*args, **kwargs)
        except Exception as exc:
            _tool_exception.set(exc)
            raise

    call_tool.__mcpmeter__ = True  # type: ignore[attr-defined]
    server.call_tool = call_tool


def install(meter: Meter, server: Any, *, user: UserResolver | None = None, user_header: str | None = None) -> Any:
    """Add the meter's middleware to an mcp ``Server`` or ``MCPServer`` (idempotent)."""
    from mcp.server.lowlevel import Server
    from mcp.server.mcpserver import MCPServer

    lowlevel = server._lowlevel_server if isinstance(server, MCPServer) else server
    if not isinstance(lowlevel, Server):  # pragma: no cover - dispatch checked the type
        raise TypeError(f"not an mcp server: {type(server).__name__}")
    chain = lowlevel.middleware
    if any(isinstance(m, MeterMiddleware) and m.meter is meter for m in chain):
        return server
    middleware = MeterMiddleware(Recorder(meter, user=user, user_header=user_header))
    # Just inside the SDK's OpenTelemetry span (if present), outside everything else, so
    # what is recorded is what the client got - whatever inner middleware did.
    position = 0
    if chain and type(chain[0]).__name__ == "OpenTelemetryMiddleware":
        position = 1
    chain.insert(position, middleware)
    if isinstance(server, MCPServer):
        _wrap_call_tool(server)
    return server

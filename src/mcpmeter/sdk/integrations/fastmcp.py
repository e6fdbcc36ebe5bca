"""FastMCP (3.x/4.x): a ``fastmcp.server.middleware.Middleware`` with the typed hooks.

``on_call_tool`` sees the tool's exception itself (FastMCP wraps it in ``ToolError``
with the original as ``__cause__``), so the error type is the real one. The request's
mcp ``ServerRequestContext`` (session, client, protocol, HTTP request) is read from the
context FastMCP binds for every request, so the fields match the mcp integration's.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from fastmcp.server.middleware import Middleware

from ...protocol import (
    INITIALIZE,
    INITIALIZE_METHOD,
    LIST_TOOLS,
    METHOD_ATTRIBUTE,
    SERVER_DISCOVER_METHOD,
    TOOL_CALL,
    TOOL_ERROR,
    TOOLS_LIST,
)
from ._common import Recorder, UserResolver, _perf, _wall, failure_of, first_text, json_size, tool_failure, tool_name

if TYPE_CHECKING:
    from ..meter import Meter

fastmcp_request_ctx: ContextVar[Any] | None
try:
    from fastmcp.server.dependencies import fastmcp_request_ctx
except ImportError:  # pragma: no cover - older FastMCP: no request fields, calls still recorded
    fastmcp_request_ctx = None


def _srctx() -> Any:
    if fastmcp_request_ctx is None:
        return None
    bound = fastmcp_request_ctx.get()
    return getattr(bound, "_srctx", None) if bound is not None else None


def _model_size(value: Any) -> int | None:
    serializer = getattr(value, "__pydantic_serializer__", None)
    if serializer is None:
        return json_size(value)
    try:
        return len(serializer.to_json(value, by_alias=True, exclude_none=True))
    except Exception:
        return None


class MeterMiddleware(Middleware):
    """Records tools/call, tools/list, initialize and server/discover of a FastMCP server."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    @property
    def meter(self) -> Meter:
        return self.recorder.meter

    async def on_call_tool(self, context: Any, call_next: Any) -> Any:
        wall, start = _wall(), _perf()
        message = context.message
        try:
            result = await call_next(context)
        except BaseException as exc:
            duration = _perf() - start
            try:
                error_type, error_message = tool_failure(exc) if isinstance(exc, Exception) else failure_of(exc)
                self._tool_event(message, wall, duration, None, False, error_type, error_message or str(exc))
            except Exception as inner:
                _internal(inner)
            raise
        duration = _perf() - start
        try:
            if getattr(result, "is_error", False):
                self._tool_event(message, wall, duration, result, False, TOOL_ERROR, first_text(result.content))
            else:
                self._tool_event(message, wall, duration, result, True, None, None)
        except Exception as exc:
            _internal(exc)
        return result

    def _tool_event(self, message: Any, wall: float, duration: float, result: Any, ok: bool, error_type: str | None,
                    error_message: str | None) -> None:
        recorder = self.recorder
        arguments = getattr(message, "arguments", None)
        srctx = _srctx()
        attributes: dict[str, Any] | None = None
        if recorder._capture_args and arguments:
            attributes = {"arguments": recorder.capture(arguments)}
        if recorder._capture_results and result is not None:
            content = {"structuredContent": result.structured_content} if result.structured_content is not None \
                else {"content": result.content}
            attributes = {**(attributes or {}), "result": recorder.capture(content)}
        recorder.emit(
            TOOL_CALL, wall, duration, recorder.context_fields(srctx, srctx.params if srctx else None),
            tool=tool_name(getattr(message, "name", None)), ok=ok, error_type=error_type,
            error_message=error_message, args_bytes=json_size(arguments if arguments is not None else {}),
            result_bytes=None if result is None else _model_size(result), attributes=attributes,
        )

    async def on_list_tools(self, context: Any, call_next: Any) -> Any:
        return await self._observe(LIST_TOOLS, TOOLS_LIST, context, call_next)

    async def on_initialize(self, context: Any, call_next: Any) -> Any:
        return await self._observe(INITIALIZE, INITIALIZE_METHOD, context, call_next)

    async def on_discover(self, context: Any, call_next: Any) -> Any:
        return await self._observe(INITIALIZE, SERVER_DISCOVER_METHOD, context, call_next)

    async def _observe(self, kind: str, method: str, context: Any, call_next: Any) -> Any:
        wall, start = _wall(), _perf()
        try:
            result = await call_next(context)
        except BaseException as exc:
            duration = _perf() - start
            try:
                error_type, error_message = failure_of(exc)
                self._emit(kind, method, wall, duration, None, ok=False, error_type=error_type,
                           error_message=error_message)
            except Exception as inner:
                _internal(inner)
            raise
        try:
            self._emit(kind, method, wall, _perf() - start, result, ok=True)
        except Exception as exc:
            _internal(exc)
        return result

    def _emit(self, kind: str, method: str, wall: float, duration: float, result: Any, **kw: Any) -> None:
        recorder = self.recorder
        srctx = _srctx()
        attributes: dict[str, Any] | None
        if kind == LIST_TOOLS:
            attributes = {"tools": len(result)} if isinstance(result, (list, tuple)) else None
            size = None
        else:
            attributes = {METHOD_ATTRIBUTE: method}
            negotiated = getattr(result, "protocol_version", None)
            if negotiated:
                attributes["negotiated_version"] = negotiated
            size = None if result is None else _model_size(result)
        recorder.emit(kind, wall, duration, recorder.context_fields(srctx, srctx.params if srctx else None),
                      result_bytes=size, attributes=attributes, **kw)


def _internal(exc: BaseException) -> None:
    from ..internal import internal_error

    internal_error("recording an instrumented request failed", exc)


def install(meter: Meter, server: Any, *, user: UserResolver | None = None, user_header: str | None = None) -> Any:
    """Add the meter's middleware to a FastMCP server, outermost (idempotent)."""
    chain = server.middleware
    if any(isinstance(m, MeterMiddleware) and m.meter is meter for m in chain):
        return server
    # Outermost, so what is recorded is what the client got, whatever inner middleware did.
    chain.insert(0, MeterMiddleware(Recorder(meter, user=user, user_header=user_header)))
    return server

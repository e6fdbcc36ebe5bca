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
    CANCELLED,
    INITIALIZE,
    INITIALIZE_METHOD,
    LIST_TOOLS,
    METHOD_ATTRIBUTE,
    OUTCOME_ATTRIBUTE,
    OUTCOME_CALLER_ERROR,
    OUTCOME_CANCELLED,
    OUTCOME_OK,
    OUTCOME_TOOL_ERROR,
    RESULT_TYPE_INPUT_REQUIRED,
    SERVER_DISCOVER_METHOD,
    TOOL_ERROR,
    TOOLS_LIST,
    UNKNOWN_TOOL,
    ok_for,
    outcome,
)
from ._common import (
    Recorder,
    UserResolver,
    _perf,
    _wall,
    failure_of,
    first_text,
    is_cancellation,
    json_size,
    tool_failure,
    tool_name,
)

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
        recorder = self.recorder
        logical = None
        try:
            srctx = _srctx()
            params = srctx.params if srctx else None
            arguments = getattr(message, "arguments", None)
            logical = recorder.open_call(wall, start, recorder.context_fields(srctx, params),
                                         tool_name(getattr(message, "name", None)), params,
                                         json_size(arguments if arguments is not None else {}))
        except Exception as exc:
            _internal(exc)
        try:
            result = await call_next(context)
        except BaseException as exc:
            now = _perf()
            try:
                if logical is not None:
                    if is_cancellation(exc):
                        recorder.end_call(logical, now, OUTCOME_CANCELLED, CANCELLED, None)
                    else:
                        error_type, error_message = tool_failure(exc) if isinstance(exc, Exception) else failure_of(exc)
                        outcome_class = OUTCOME_TOOL_ERROR if isinstance(exc, Exception) else outcome(False, error_type)
                        recorder.end_call(logical, now, outcome_class, error_type, error_message or str(exc),
                                          attributes=self._captured(message, None))
            except Exception as inner:
                _internal(inner)
            raise
        now = _perf()
        try:
            if logical is not None and not self._unfinished(logical, result):
                self._tool_event(message, logical, now, result)
        except Exception as exc:
            _internal(exc)
        return result

    def _unfinished(self, logical: Any, result: Any) -> bool:
        """An ask for input (``InputRequiredToolResult``) or a task: the call goes on."""
        asked = getattr(result, "input_required", None)
        if asked is not None:
            return self.recorder.unfinished(logical, RESULT_TYPE_INPUT_REQUIRED, getattr(asked, "request_state", None), None)
        task = getattr(result, "task", None)
        task_id = getattr(task, "task_id", None) if task is not None else None
        return self.recorder.unfinished(logical, None, None, task_id) if task_id else False

    def _captured(self, message: Any, result: Any) -> dict[str, Any] | None:
        """The arguments and result contents, when the owner asked for them."""
        recorder = self.recorder
        arguments = getattr(message, "arguments", None)
        attributes: dict[str, Any] | None = None
        if recorder._capture_args and arguments:
            attributes = {"arguments": recorder.capture(arguments)}
        if recorder._capture_results and result is not None:
            content = {"structuredContent": result.structured_content} if result.structured_content is not None \
                else {"content": result.content}
            attributes = {**(attributes or {}), "result": recorder.capture(content)}
        return attributes

    def _tool_event(self, message: Any, logical: Any, now: float, result: Any) -> None:
        recorder = self.recorder
        attributes = self._captured(message, result)
        if getattr(result, "is_error", False):
            error_type, outcome_class = TOOL_ERROR, OUTCOME_TOOL_ERROR
            text = first_text(result.content)
            if isinstance(text, str) and text.startswith("Unknown tool:"):  # FastMCP's answer to a name it has not
                error_type, outcome_class = UNKNOWN_TOOL, OUTCOME_CALLER_ERROR
            recorder.end_call(logical, now, outcome_class, error_type, text,
                              result_bytes=_model_size(result), attributes=attributes)
        else:
            recorder.end_call(logical, now, OUTCOME_OK, None, None, result_bytes=_model_size(result), attributes=attributes)

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
                if is_cancellation(exc):
                    error_type, error_message = CANCELLED, None
                else:
                    error_type, error_message = failure_of(exc)
                outcome_class = outcome(False, error_type)
                self._emit(kind, method, wall, duration, None, ok=ok_for(outcome_class), error_type=error_type,
                           error_message=error_message, outcome_class=outcome_class)
            except Exception as inner:
                _internal(inner)
            raise
        try:
            self._emit(kind, method, wall, _perf() - start, result, ok=True, outcome_class=OUTCOME_OK)
        except Exception as exc:
            _internal(exc)
        return result

    def _emit(self, kind: str, method: str, wall: float, duration: float, result: Any, outcome_class: str,
              **kw: Any) -> None:
        recorder = self.recorder
        srctx = _srctx()
        fields = recorder.context_fields(srctx, srctx.params if srctx else None)
        attributes: dict[str, Any] = {OUTCOME_ATTRIBUTE: outcome_class}
        if kind == LIST_TOOLS:
            count = recorder.catalog(result, fields) if result is not None else None
            if count is not None:
                attributes["tools"] = count
            size = None
        else:
            attributes[METHOD_ATTRIBUTE] = method
            negotiated = getattr(result, "protocol_version", None)
            if negotiated:
                attributes["negotiated_version"] = negotiated
            size = None if result is None else _model_size(result)
        recorder.emit(kind, wall, duration, fields, result_bytes=size, attributes=attributes, **kw)


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

"""mcp 2.x: ``Server`` (low level) and ``MCPServer``, through the SDK's own middleware seam.

``Server.middleware`` wraps every inbound request - ``initialize``, ``server/discover``,
lookup, params validation and the handler - and hands each layer the wire-shaped result
dict. A ``tools/call`` answered ``input_required`` or with a task stays open until its
final result (``Recorder.open_call``); extension methods such as ``tasks/get`` pass the
same middleware, so a task's terminal status ends its call. The meter's middleware only observes: it returns exactly what ``call_next``
returned and re-raises exactly what it raised, so schemas and results are untouched.

For ``MCPServer`` a tool's exception never reaches middleware (the server turns it into
an ``isError`` result); wrapping the instance's public ``call_tool`` lets the middleware
name the real exception type instead of just ``tool_error``.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ...calls import Logical
from ...protocol import (
    CANCELLED,
    HANDSHAKE_METHODS,
    INITIALIZE,
    INITIALIZE_METHOD,
    LIST_TOOLS,
    METHOD_ATTRIBUTE,
    OUTCOME_ATTRIBUTE,
    OUTCOME_CALLER_ERROR,
    OUTCOME_CANCELLED,
    OUTCOME_OK,
    OUTCOME_TOOL_ERROR,
    RESULT_TYPE_TASK,
    TASK_METHODS,
    TASKS_RESULT,
    TOOL_ERROR,
    TOOLS_CALL,
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

# The exception a wrapped MCPServer.call_tool raised during the current request.
_tool_exception: contextvars.ContextVar[BaseException | None] = contextvars.ContextVar(
    "mcpmeter_tool_exception", default=None
)


class MeterMiddleware:
    """A ``ServerMiddleware`` recording tools/call, tools/list, initialize and server/discover,
    and following tasks/* for the calls that ran as tasks."""

    __slots__ = ("recorder", "tool_exists")

    def __init__(self, recorder: Recorder, tool_exists: Callable[[str], bool] | None = None) -> None:
        self.recorder = recorder
        self.tool_exists = tool_exists  # MCPServer answers an unknown tool with isError: it is the caller's error

    @property
    def meter(self) -> Meter:
        return self.recorder.meter

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        method = ctx.method
        if method == TOOLS_CALL:
            return await self._tool_call(ctx, call_next)
        if method in TASK_METHODS:
            return await self._task(ctx, call_next)
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
            error_type, message, outcome_class = _failure(exc)
            failed: dict[str, Any] = {OUTCOME_ATTRIBUTE: outcome_class}
            if kind == INITIALIZE:
                failed[METHOD_ATTRIBUTE] = method
            self._emit(kind, wall, start, ctx, ok=ok_for(outcome_class), error_type=error_type, error_message=message,
                       attributes=failed)
            raise
        duration = _perf() - start
        try:
            fields = self.recorder.context_fields(ctx, ctx.params)
            attributes: dict[str, Any] = {OUTCOME_ATTRIBUTE: OUTCOME_OK}
            if kind == LIST_TOOLS:
                count = self.recorder.catalog(result.get("tools") if isinstance(result, dict) else None, fields)
                if count is not None:
                    attributes["tools"] = count
            else:
                attributes[METHOD_ATTRIBUTE] = method
                if method == INITIALIZE_METHOD and isinstance(result, dict):
                    # the negotiated version (the connection commits it after the chain returns)
                    attributes["negotiated_version"] = result.get("protocolVersion")
            self.recorder.emit(kind, wall, duration, fields, ok=True, result_bytes=json_size(result), attributes=attributes)
        except Exception as exc:
            _internal(exc)
        return result

    async def _tool_call(self, ctx: Any, call_next: Any) -> Any:
        wall, start = _wall(), _perf()
        recorder = self.recorder
        logical = None
        try:
            params = ctx.params or {}
            arguments = params.get("arguments")
            logical = recorder.open_call(wall, start, recorder.context_fields(ctx, params), tool_name(params.get("name")),
                                         params, json_size(arguments if arguments is not None else {}))
        except Exception as exc:
            _internal(exc)
        try:
            result = await call_next(ctx)
        except BaseException as exc:
            now = _perf()
            _tool_exception.set(None)
            try:
                if logical is not None:
                    error_type, message, outcome_class = _failure(exc)
                    recorder.end_call(logical, now, outcome_class, error_type, message)
            except Exception as inner:
                _internal(inner)
            raise
        now = _perf()
        try:
            raised = _tool_exception.get()
            if raised is not None:
                _tool_exception.set(None)
            if logical is not None and not self._unfinished(logical, result):
                self._tool_event(ctx, logical, now, result, raised)
        except Exception as exc:
            _internal(exc)
        return result

    def _unfinished(self, logical: Logical, result: Any) -> bool:
        if not isinstance(result, dict):
            return False
        task = result.get("task")
        task_id = task.get("taskId") if isinstance(task, dict) else None
        if task_id is None and result.get("resultType") == RESULT_TYPE_TASK:
            task_id = result.get("taskId")
        unfinished = self.recorder.unfinished(logical, result.get("resultType"), result.get("requestState"), task_id)
        if unfinished and isinstance(task, dict):
            self.recorder.task_state(logical, task.get("status"), task.get("statusMessage"), False, None)
        return unfinished

    def _tool_event(self, ctx: Any, logical: Logical, now: float, result: Any, raised: BaseException | None) -> None:
        recorder = self.recorder
        attributes: dict[str, Any] | None = None
        if recorder._capture_args:
            arguments = (ctx.params or {}).get("arguments")
            if arguments:
                attributes = {"arguments": recorder.capture(arguments)}
        if recorder._capture_results and isinstance(result, dict):
            content = {k: result[k] for k in ("structuredContent", "content") if k in result}
            attributes = {**(attributes or {}), "result": recorder.capture(content)}
        if isinstance(result, dict) and result.get("isError") is True:
            error_type, message, outcome_class = TOOL_ERROR, None, OUTCOME_TOOL_ERROR
            name = logical.data.tool
            if self.tool_exists is not None and isinstance(name, str) and not self.tool_exists(name):
                error_type, outcome_class = UNKNOWN_TOOL, OUTCOME_CALLER_ERROR
            elif raised is not None:
                error_type, message = tool_failure(raised)
            recorder.end_call(logical, now, outcome_class, error_type, message or first_text(result.get("content")),
                              result_bytes=json_size(result), attributes=attributes)
        else:
            recorder.end_call(logical, now, OUTCOME_OK, None, None, result_bytes=json_size(result), attributes=attributes)

    async def _task(self, ctx: Any, call_next: Any) -> Any:
        """tasks/get, tasks/result, tasks/cancel: polls are no calls; a terminal status ends
        the call that created the task."""
        try:
            logical = self.recorder.task_request(ctx.method, ctx.params)
        except Exception as exc:
            _internal(exc)
            logical = None
        result = await call_next(ctx)  # a failed poll says nothing about the task
        if logical is None:
            return result
        try:
            if isinstance(result, BaseModel):
                result = result.model_dump(mode="json", by_alias=True, exclude_none=True)
            if not isinstance(result, dict):
                return result
            if ctx.method == TASKS_RESULT:  # the call's own result
                failed = result.get("isError") is True
                self.recorder.task_state(logical, "completed", first_text(result.get("content")), failed, json_size(result))
                return result
            nested = result.get("task")
            task: dict[str, Any] = nested if isinstance(nested, dict) else result
            payload = result.get("result")
            final: dict[str, Any] | None = payload if isinstance(payload, dict) else None
            failed = final is not None and final.get("isError") is True
            message = first_text(final.get("content")) if failed and final is not None else task.get("statusMessage")
            self.recorder.task_state(logical, task.get("status"), message, failed,
                                     json_size(final) if final is not None else None)
        except Exception as exc:
            _internal(exc)
        return result

    def _emit(self, kind: str, wall: float, start: float, ctx: Any, **kw: Any) -> None:
        try:
            self.recorder.emit(kind, wall, _perf() - start, self.recorder.context_fields(ctx, ctx.params), **kw)
        except Exception as exc:
            _internal(exc)


def _failure(exc: BaseException) -> tuple[str, str, str]:
    """(error_type, message, outcome class) of an exception out of a request: the client
    cancelling, a JSON-RPC error (the caller's or the server's, by code), or the server
    failing."""
    if is_cancellation(exc):
        return CANCELLED, "", OUTCOME_CANCELLED
    error_type, message = failure_of(exc)
    return error_type, message, outcome(False, error_type)


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
    tool_exists = None
    if isinstance(server, MCPServer):
        manager = server._tool_manager

        def tool_exists(name: str) -> bool:
            return manager.get_tool(name) is not None

    middleware = MeterMiddleware(Recorder(meter, user=user, user_header=user_header), tool_exists)
    # Just inside the SDK's OpenTelemetry span (if present), outside everything else, so
    # what is recorded is what the client got - whatever inner middleware did.
    position = 0
    if chain and type(chain[0]).__name__ == "OpenTelemetryMiddleware":
        position = 1
    chain.insert(position, middleware)
    if isinstance(server, MCPServer):
        _wrap_call_tool(server)
    return server

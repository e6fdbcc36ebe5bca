"""What every framework integration shares: who is calling, over what, how big, the
logical calls still open (input rounds, tasks: ``mcpmeter.calls``), the catalog a
``tools/list`` names, and the event that goes on the Meter's queue.

Everything here runs inside the server's request, so it does the least it can: a few
attribute reads, two ``msgspec`` size measurements, one ``new_event`` (which clips every
value to the wire format's limits) and a deque append. Argument and result *contents* are
only touched when the owner opted in.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

import msgspec

from ...calls import Logical, OpenCalls
from ...events import MAX_ATTRIBUTE_VALUE, UNNAMED, new_event
from ...protocol import (
    CANCELLED,
    CLIENT_INFO_META_KEY,
    DEFINITION_HASH_ATTRIBUTE,
    OUTCOME_ATTRIBUTE,
    OUTCOME_CANCELLED,
    RESULT_TYPE_INPUT_REQUIRED,
    TASK_TERMINAL,
    TASKS_CANCEL,
    TOOL_CALL,
    TOOL_LISTED,
    catalog_event_id,
    definition_hash,
    error_type_for_code,
    ok_for,
    task_outcome,
)
from ..internal import internal_error

if TYPE_CHECKING:
    from ..meter import Meter

DEFAULT_REDACT_KEYS = (
    "password", "passwd", "secret", "token", "authorization", "api_key", "apikey", "api-key",
    "cookie", "credential", "private_key", "session_key",
)
REDACTED = "[redacted]"
_SESSION_STATE_KEY = "mcpmeter.session_id"
_FIELDS_KEY = "mcpmeter.fields"
try:  # protocol versions with no handshake: every request stands alone
    from mcp_types.version import MODERN_PROTOCOL_VERSIONS
    _MODERN_VERSIONS = frozenset(MODERN_PROTOCOL_VERSIONS)
except ImportError:  # pragma: no cover - mcp-types is what every supported framework runs on
    _MODERN_VERSIONS = frozenset(("2026-07-28",))
MAX_LISTED = 10_000  # catalog entries remembered as recorded today (beyond, the store's ids dedupe)

_encode = msgspec.json.Encoder().encode
_perf = time.perf_counter
_wall = time.time

UserResolver = Callable[[Any], "str | None"]
# (session_id, client_name, client_version, protocol_version, transport, user) of a request
Fields = tuple[Any, ...]


def json_size(value: Any) -> int | None:
    """Bytes of ``value`` as compact JSON (what it weighs on the wire), None if not JSON."""
    try:
        return len(_encode(value))
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
        return None


class Recorder:
    """Turns one observed request into an event on ``meter``'s queue."""

    __slots__ = (
        "_capture_args",
        "_capture_results",
        "_listed",
        "_max_chars",
        "_redact",
        "_user_fn",
        "_user_header",
        "calls",
        "meter",
    )

    def __init__(self, meter: Meter, user: UserResolver | None = None, user_header: str | None = None) -> None:
        self.meter = meter
        self._user_fn = user
        self._user_header = user_header.lower() if user_header else None
        self._capture_args = bool(meter.capture_arguments)
        self._capture_results = bool(meter.capture_results)
        keys = meter.redact_keys if meter.redact_keys is not None else DEFAULT_REDACT_KEYS
        self._redact = tuple(k.lower() for k in keys)
        self._max_chars = max(16, min(int(meter.capture_max_chars), MAX_ATTRIBUTE_VALUE))
        self.calls = OpenCalls()
        self._listed: set[tuple[Any, ...]] = set()

    # ---- the request's context --------------------------------------------------------

    def context_fields(self, srctx: Any, params: Mapping[str, Any] | None) -> Fields:
        """(session_id, client_name, client_version, protocol_version, transport, user) for
        an mcp ``ServerRequestContext`` (None outside a request: programmatic calls).

        On a handshake connection everything but the user is fixed once the client has
        initialized, so it is worked out once and kept in the connection's state.
        """
        if srctx is None:
            return None, None, None, None, self.meter.transport_name, self._user(None, None)
        request = srctx.request
        if request is None and self._user_fn is None:
            user = self.meter.user  # stdio / in-process: MCPMETER_USER or the OS user
        else:
            user = self._user(srctx, request)
        connection = getattr(srctx.session, "_connection", None)
        if connection is not None:
            known = connection.state.get(_FIELDS_KEY)
            if known is not None:
                return (*known, user)
        known = self._connection_fields(srctx, connection, params, request)
        if connection is not None and connection.client_params is not None and known[3] not in _MODERN_VERSIONS:
            connection.state[_FIELDS_KEY] = known
        return (*known, user)

    def _connection_fields(self, srctx: Any, connection: Any, params: Any, request: Any) -> Fields:
        version = srctx.protocol_version
        name = client_version = session_id = None
        client = connection.client_params if connection is not None else None
        if client is not None:
            info = client.client_info
            name, client_version = info.name, info.version
        elif params:
            # initialize (not committed yet) carries clientInfo; 2026-07-28 requests carry it in _meta.
            info = params.get("clientInfo")
            if info is None:
                meta = params.get("_meta")
                info = meta.get(CLIENT_INFO_META_KEY) if isinstance(meta, dict) else None
            if isinstance(info, dict):
                name, client_version = info.get("name"), info.get("version")
        if connection is not None:
            session_id = connection.session_id
            if session_id is None and version not in _MODERN_VERSIONS:
                # A handshake connection without a transport session id (stdio, in-memory) is
                # still one session: give it an id that lasts as long as the connection.
                state = connection.state
                session_id = state.get(_SESSION_STATE_KEY)
                if session_id is None:
                    session_id = state[_SESSION_STATE_KEY] = uuid.uuid4().hex
        if request is None:
            transport = self.meter.transport_name
        else:
            # The legacy SSE transport posts to ?session_id=...; streamable HTTP uses a header.
            query = getattr(request, "query_params", None)
            transport = "sse" if query is not None and "session_id" in query else "streamable-http"
        # Client-supplied text is clipped to the wire format's limits by ``new_event``.
        return session_id, name, client_version, version, transport

    def _user(self, srctx: Any, request: Any) -> Any:
        """Who is calling (any value: ``new_event`` makes it text within the limit)."""
        if self._user_fn is not None:
            try:
                return self._user_fn(srctx)
            except Exception as exc:  # the owner's resolver must not break the call
                internal_error("the user resolver given to instrument() raised", exc)
                return None
        if request is None:
            return self.meter.user
        user = _token_principal(request)
        if user is None and self._user_header is not None:
            user = request.headers.get(self._user_header)
        return user

    # ---- contents (opt-in) ------------------------------------------------------------

    def capture(self, value: Any) -> str:
        """``value`` with secret-looking keys redacted, as JSON text of at most the cap."""
        try:
            text = _encode(self._redacted(value, 0)).decode()
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
            text = repr(value)
        limit = self._max_chars
        return text if len(text) <= limit else text[: limit - 1] + "…"

    def _redacted(self, value: Any, depth: int) -> Any:
        if depth > 32:
            return "…"
        if isinstance(value, Mapping):
            keys = self._redact
            return {
                k: REDACTED if isinstance(k, str) and any(p in k.lower() for p in keys) else self._redacted(v, depth + 1)
                for k, v in value.items()
            }
        if isinstance(value, (list, tuple)):
            return [self._redacted(v, depth + 1) for v in value]
        if hasattr(value, "model_dump"):  # pydantic models (FastMCP results)
            return self._redacted(value.model_dump(mode="json", by_alias=True, exclude_none=True), depth + 1)
        return value

    # ---- the event --------------------------------------------------------------------

    # ---- one logical tools/call (rounds, tasks) ------------------------------------------

    def open_call(self, wall: float, start: float, fields: tuple[Any, ...], tool: Any, params: Mapping[str, Any] | None,
                  args_bytes: int | None) -> Logical:
        """The logical call a tools/call request starts, or continues (a retry carrying
        ``requestState``/``inputResponses`` after an input_required answer)."""
        fallback = (fields[0], fields[5], fields[1], tool)
        if params and (params.get("requestState") is not None or "inputResponses" in params):
            logical = self.calls.resume(params.get("requestState"), fallback, start)
            if logical is not None:
                return logical
        return Logical(_First(wall, fields, tool, args_bytes, fallback), start)

    def unfinished(self, logical: Logical, result_type: Any, request_state: Any, task_id: Any) -> bool:
        """Whether a tools/call result leaves the call open: input_required (the client will
        retry) or a task (its terminal status ends it)."""
        now = _perf()
        if result_type == RESULT_TYPE_INPUT_REQUIRED:
            for lost in self.calls.wait_input(logical, request_state, logical.data.fallback, now):
                self.end_call(lost, now, OUTCOME_CANCELLED, CANCELLED, None, attributes={"reason": "no_retry"})
            self._expire(now)
            return True
        if isinstance(task_id, str) and task_id:
            for lost in self.calls.start_task(logical, task_id):
                self.end_call(lost, now, OUTCOME_CANCELLED, CANCELLED, None, attributes={"reason": "too_many_open"})
            return True
        return False

    def task_request(self, method: str, params: Mapping[str, Any] | None) -> Logical | None:
        """A tasks/* request about a task one of our calls created (a poll unless a cancel)."""
        logical = self.calls.task((params or {}).get("taskId"))
        if logical is not None and method != TASKS_CANCEL:
            logical.polls += 1
        return logical

    def task_state(self, logical: Logical, status: Any, message: Any, final_is_error: bool,
                   result_bytes: int | None) -> None:
        """A task's status: a terminal one ends its call with the task's outcome."""
        if status not in TASK_TERMINAL or self.calls.end_task(logical.task_id) is None:
            return
        outcome_class, error_type = task_outcome(status, final_is_error)
        self.end_call(logical, _perf(), outcome_class, error_type,
                      message if error_type is not None and isinstance(message, str) else None,
                      result_bytes=result_bytes)

    def end_call(self, logical: Logical, now: float, outcome_class: str, error_type: str | None,
                 error_message: str | None, *, result_bytes: int | None = None,
                 attributes: dict[str, Any] | None = None) -> None:
        """The one event of a logical call, from its first request to ``now``."""
        first: _First = logical.data
        attrs = {**(attributes or {}), **logical.attributes(), OUTCOME_ATTRIBUTE: outcome_class}
        self.emit(TOOL_CALL, first.wall, now - logical.start, first.fields, tool=first.tool, ok=ok_for(outcome_class),
                  error_type=error_type, error_message=error_message, args_bytes=first.args_bytes,
                  result_bytes=result_bytes, attributes=attrs)

    def _expire(self, now: float) -> None:
        for logical in self.calls.expired(now):
            reason = "no_retry" if logical.task_id is None else "task_unfinished"
            self.end_call(logical, now, OUTCOME_CANCELLED, CANCELLED, None, attributes={"reason": reason})

    # ---- the catalog ------------------------------------------------------------------

    def catalog(self, tools: Any, fields: tuple[Any, ...]) -> int | None:
        """One ``tool_listed`` event per tool a tools/list result names (``result_bytes``:
        its definition's JSON size), once a day per definition; returns how many it named."""
        if not isinstance(tools, (list, tuple)):
            return None
        wall = _wall()
        day = int(wall // 86_400)
        server = self.meter.server
        transport = fields[4]
        for tool in tools:
            definition = _definition(tool)
            if definition is None:
                continue
            name, raw = definition
            digest = definition_hash(raw)
            key = (server, name, digest, day)
            if key in self._listed:
                continue
            if len(self._listed) >= MAX_LISTED:
                self._listed.clear()
            self._listed.add(key)
            self.emit(TOOL_LISTED, wall, 0.0, (None, None, None, None, transport, None), tool=name,
                      result_bytes=len(raw), attributes={DEFINITION_HASH_ATTRIBUTE: digest},
                      id=catalog_event_id(server, name, digest, day), duration_known=False)
        return len(tools)

    def emit(
        self, kind: str, wall_start: float, duration: float, fields: Fields, *,
        tool: str | None = None, ok: bool | None = None, error_type: str | None = None,
        error_message: str | None = None, args_bytes: int | None = None,
        result_bytes: int | None = None, attributes: dict[str, Any] | None = None, id: str | None = None,
        duration_known: bool = True,
    ) -> None:
        meter = self.meter
        if meter.disabled:
            return
        session_id, client_name, client_version, protocol_version, transport, user = fields
        try:
            event = new_event(
                kind, int(wall_start * 1000), meter.server, id=id, server_version=meter.server_version, tool=tool,
                duration_ms=round(duration * 1000, 3) if duration_known else None, ok=ok,
                error_type=error_type, error_message=error_message,
                session_id=session_id, client_name=client_name, client_version=client_version,
                protocol_version=protocol_version, transport=transport, user=user,
                args_bytes=args_bytes, result_bytes=result_bytes, attributes=attributes,
            )
        except Exception as exc:  # never into the host server
            internal_error("could not build an event for an instrumented request", exc)
            return
        meter._enqueue(event)


class _First:
    """What a logical call's event takes from its first request."""

    __slots__ = ("args_bytes", "fallback", "fields", "tool", "wall")

    def __init__(self, wall: float, fields: tuple[Any, ...], tool: Any, args_bytes: int | None,
                 fallback: tuple[Any, ...]) -> None:
        self.wall = wall
        self.fields = fields
        self.tool = tool
        self.args_bytes = args_bytes
        self.fallback = fallback


def _definition(tool: Any) -> tuple[str, bytes] | None:
    """(name, JSON bytes) of one tool definition: a wire dict or a pydantic ``Tool``."""
    try:
        if isinstance(tool, Mapping):
            name, raw = tool.get("name"), _encode(tool)
        else:
            serializer = getattr(tool, "__pydantic_serializer__", None)
            if serializer is None:
                return None
            name = getattr(tool, "name", None)
            raw = serializer.to_json(tool, by_alias=True, exclude_none=True)
    except Exception:
        return None
    return (name, raw) if isinstance(name, str) and name else None


def is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is the async framework cancelling the request (the client cancelled
    or went away): the call is then cancelled, not failed."""
    try:
        import anyio

        return isinstance(exc, anyio.get_cancelled_exc_class())
    except Exception:  # no async library running this: not a cancellation
        return False


def _token_principal(request: Any) -> str | None:
    """The authenticated principal of an HTTP request: the token's subject, else its client id."""
    user = request.scope.get("user") if hasattr(request, "scope") else None
    token = getattr(user, "access_token", None)
    if token is None:
        try:
            from mcp.server.auth.middleware.auth_context import get_access_token
        except ImportError:  # pragma: no cover - mcp is what called us
            return None
        token = get_access_token()
    if token is None:
        return None
    return getattr(token, "subject", None) or getattr(token, "client_id", None)


def tool_name(value: Any) -> Any:
    """The tool a tools/call names (``new_event`` makes it a name within the limit)."""
    return UNNAMED if value is None else value


def failure_of(exc: BaseException) -> tuple[str, str]:
    """(error_type, error_message) for an exception raised out of a request."""
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    if isinstance(code, int):  # mcp.shared.exceptions.MCPError: a JSON-RPC error answer
        return error_type_for_code(code), str(getattr(error, "message", "") or exc)
    if type(exc).__name__ == "ValidationError" and type(exc).__module__.startswith("pydantic"):
        return "invalid_params", "Invalid request parameters"  # pydantic text echoes client input
    return type(exc).__name__, str(exc)


def tool_failure(raised: BaseException) -> tuple[str, str | None]:
    """(error_type, message or None) for the exception behind a failed tool call.

    Frameworks wrap a tool's exception (``ToolError(...) from exc``); the type recorded is
    the original's. Argument validation errors are described by field names only: pydantic's
    text echoes the caller's values, which are not recorded unless the owner asks.
    """
    cause = raised.__cause__ if raised.__cause__ is not None else raised
    for candidate in (cause, raised):
        if type(candidate).__name__ == "ValidationError" and type(candidate).__module__.startswith("pydantic"):
            try:
                fields = sorted({".".join(str(p) for p in e["loc"]) for e in cast(Any, candidate).errors()})
            except Exception:
                fields = []
            return "ValidationError", "invalid arguments: " + (", ".join(fields) or "?")
    return failure_of(cause)[0], None


def first_text(content: Any) -> str | None:
    """The first text block of a tool result's content (its error message when isError)."""
    if not content:
        return None
    for block in content:
        text = block.get("text") if isinstance(block, dict) else getattr(block, "text", None)
        if isinstance(text, str):
            return text
    return None


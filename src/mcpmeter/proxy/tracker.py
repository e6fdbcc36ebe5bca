"""What the proxies record: JSON-RPC request/response matching and event building.

Both transports (stdio and streamable HTTP) hand every client→server and server→client
message to one ``Tracker`` *after* forwarding it. The tracker never sits in the
forwarding path and never raises into it: a message it cannot read is simply not
tracked.

Reading is bounded (``proxy.wire``): msgspec decodes only the few members we use (``id``,
``method``, the tool name, ``isError``, ``serverInfo``…) into small structs, and keeps
``arguments``, ``result`` and ``content`` as raw slices of the input. A 5 MB result is one
allocation-free scan, and its size is exact: ``len`` of the raw slice.

Sizes are those of the JSON values on the wire: ``args_bytes`` is the ``arguments``
object of a ``tools/call``, ``result_bytes`` the ``result`` (or ``error``) of its response.

One logical call is one event (``mcpmeter.calls``): a ``tools/call`` answered
``input_required`` waits for the client's retry (matched by ``requestState``), one answered
with a task waits for the task's terminal status (``tasks/get``, ``tasks/result``,
``tasks/cancel``, ``notifications/tasks/status``); polls are never events. Every request
event carries its outcome class (``protocol.OUTCOME_ATTRIBUTE``). A ``tools/list`` result
records the catalog: one ``tool_listed`` event per tool, with the size of its definition,
once a day per definition (``protocol.catalog_event_id``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

import msgspec
from msgspec import UNSET, Raw, UnsetType

from ..calls import Logical, OpenCalls
from ..events import MAX_ATTRIBUTE_VALUE, MAX_ERROR_MESSAGE, MAX_PROTOCOL_VERSION
from ..protocol import (
    CANCELLED,
    CANCELLED_NOTIFICATION,
    DEFINITION_HASH_ATTRIBUTE,
    HANDSHAKE_METHODS,
    INITIALIZE_METHOD,
    KIND_FOR_METHOD,
    METHOD_ATTRIBUTE,
    OUTCOME_ATTRIBUTE,
    OUTCOME_CALLER_ERROR,
    OUTCOME_CANCELLED,
    OUTCOME_OK,
    OUTCOME_SERVER_ERROR,
    OUTCOME_TOOL_ERROR,
    RESULT_TYPE_INPUT_REQUIRED,
    RESULT_TYPE_TASK,
    SERVER_DISCOVER_METHOD,
    SESSION_END,
    SESSION_START,
    TASK_METHODS,
    TASK_STATUS_NOTIFICATION,
    TASK_TERMINAL,
    TASKS_CANCEL,
    TASKS_RESULT,
    TOOL_ERROR,
    TOOL_LISTED,
    TOOLS_CALL,
    TOOLS_LIST,
    UNKNOWN_TOOL,
    catalog_event_id,
    definition_hash,
    ok_for,
    outcome,
    task_outcome,
)
from .wire import (
    Message,
    Params,
    Result,
    clipped,
    decode_contents,
    decode_params,
    decode_tool,
    error_of,
    first_text,
    id_key,
    implementation,
    messages,
    meta_of,
    result_of,
)

# The methods recorded are those with a kind of their own (protocol.KIND_FOR_METHOD). Both
# handshakes are kind "initialize", as every capture path records them; the 2026-07-28 one
# is told apart by its `mcp.method.name` attribute.
MAX_HELD = 1_000  # events kept while the server's name is unknown
MAX_PENDING = 100_000  # unanswered requests kept per connection (a misbehaving peer cannot grow it further)
MAX_LISTED = 10_000  # catalog entries remembered as recorded today (beyond, the store's ids dedupe)
EXPIRY_EVERY_S = 5.0  # how often open calls are checked for clients that never came back


# ---- state --------------------------------------------------------------------------------


class Connection:
    """One MCP conversation as the proxy sees it.

    A stdio child's lifetime, a streamable-HTTP session (``Mcp-Session-Id``), or a single
    sessionless HTTP request. Requests are matched to responses within a connection only.
    """

    __slots__ = (
        "announced",
        "client_name",
        "client_version",
        "is_session",
        "pending",
        "protocol_version",
        "session_id",
        "started",
        "user",
    )

    def __init__(self, session_id: str | None = None, *, user: str | None = None,
                 is_session: bool = True, started: float | None = None) -> None:
        self.session_id = session_id
        self.user = user
        self.client_name: str | None = None
        self.client_version: str | None = None
        self.protocol_version: str | None = None
        self.started = time.perf_counter() if started is None else started
        self.pending: dict[tuple, _Pending] = {}
        self.is_session = is_session  # session_start/session_end are recorded for it
        self.announced = False


class _Pending:
    """A request waiting for its response. Who the client is comes from the connection
    when the event is built (the handshake may be processed after a request that
    followed it); only a handshake's proposed protocol version is kept here."""

    __slots__ = ("args_bytes", "client", "logical", "method", "protocol_version", "start", "task_id", "tool", "user")

    def __init__(self, method: str, tool: str | None, start: float, args_bytes: int | None,
                 user: str | None, protocol_version: str | None = None) -> None:
        self.method = method
        self.tool = tool
        self.start = start
        self.args_bytes = args_bytes
        self.user = user
        self.protocol_version = protocol_version
        self.client: tuple[str | None, str | None] | None = None  # this request's own meta_of clientInfo
        self.logical: Logical | None = None  # the logical tools/call this request is a round of
        self.task_id: str | None = None  # the task a tasks/* request is about


def new_session_id() -> str:
    return uuid.uuid4().hex


class Tracker:
    """Turns the traffic of one proxied server into events on a ``Meter``.

    Not thread-safe: each proxy feeds it from one thread (stdio) or one event loop (HTTP).
    ``t`` arguments are ``time.perf_counter()`` readings taken when the bytes were
    forwarded, so durations are the proxy's view from request to response.

    The server's name is, in order: the ``server`` given (``--server-name`` or
    ``MCPMETER_SERVER_NAME``), the ``serverInfo`` of the handshake result, else
    ``fallback_server``. Events are held back (bounded) until the handshake is over, so
    that the events of a conversation carry the same name. A fallback is provisional: a
    ``serverInfo`` seen later (an HTTP proxy started mid-session, then a new session)
    names the events from then on.

    Logical calls (rounds, tasks) are kept per tracker, not per connection: on the
    2026-07-28 HTTP transport every request is a connection of its own.
    """

    def __init__(self, meter, *, transport: str, server: str | None = None, fallback_server: str | None = None) -> None:
        self.meter = meter
        self.transport = transport
        self.server = clipped(server)
        self.server_version: str | None = None
        self._fallback = clipped(fallback_server) or self.server or "mcp-server"
        self._provisional = False  # the name is the fallback: serverInfo may still replace it
        self._held: list[dict[str, Any]] = []
        self._offset = time.time() - time.perf_counter()
        self.calls = OpenCalls()
        self._listed: set[tuple] = set()  # (server, tool, definition hash, day) recorded by this process
        self._known: set[str] = set()  # the tools the server listed (a call to another is the caller's error)
        self._next_expiry = 0.0

    # ---- lifecycle ----------------------------------------------------------------------

    def close(self, conn: Connection, reason: str, t: float | None = None,
              attributes: dict[str, Any] | None = None) -> None:
        """The conversation ended: unanswered requests fail with ``reason``; calls still
        waiting for the client's input or for their task end as cancelled; session_end."""
        t = time.perf_counter() if t is None else t
        self._announce(conn)
        self.abandon(conn, list(conn.pending), reason, t)
        for logical in self.calls.drain(lambda lg: lg.data[0] is conn):
            self._end(logical, t, OUTCOME_CANCELLED, CANCELLED, None, attributes={"reason": reason})
        if conn.is_session:
            attrs = {"reason": reason, **(attributes or {})}
            self._emit(conn, SESSION_END, ts=t, duration=t - conn.started, attributes=attrs)

    def finish(self) -> None:
        """Record what is still open and release held events (the name is whatever we know
        by now) - call before shutdown."""
        t = time.perf_counter()
        for logical in self.calls.drain():
            self._end(logical, t, OUTCOME_CANCELLED, CANCELLED, None, attributes={"reason": "proxy_stopped"})
        if self.server is None:
            self._resolve(None)

    def abandon(self, conn: Connection, keys: Iterable[tuple], reason: str, t: float | None = None,
                message: str | None = None) -> None:
        """Requests that will get no response: cancelled by the client (``cancelled``, a
        client that disconnected), refused by the HTTP upstream (``http_4xx``: the caller's
        error) or lost with the server (anything else)."""
        t = time.perf_counter() if t is None else t
        if reason == "client_disconnected":
            reason, attributes = CANCELLED, {"reason": "client_disconnected"}
        else:
            attributes = None
        if reason == CANCELLED:
            outcome_class = OUTCOME_CANCELLED
        elif reason.startswith("http_4"):
            outcome_class = OUTCOME_CALLER_ERROR
        else:
            outcome_class = OUTCOME_SERVER_ERROR
        for key in keys:
            pending = conn.pending.pop(key, None)
            if pending is None or pending.method in TASK_METHODS:
                continue  # a poll that got no answer changes nothing about its task
            self._emit_call(conn, pending, t, outcome_class, error_type=reason, error_message=message,
                            attributes=attributes)

    # ---- traffic ------------------------------------------------------------------------

    def from_client(self, conn: Connection, data: bytes, t: float, user: str | None = None) -> list[tuple]:
        """A message (or batch) the client sent; returns the keys of the requests registered."""
        keys: list[tuple] = []
        if self.calls and t >= self._next_expiry:
            self._expire(t)
        for msg in messages(data):
            method = msg.method
            if not isinstance(method, str):
                continue  # a response to a server→client request, or not JSON-RPC
            if msg.id is UNSET:
                if method == CANCELLED_NOTIFICATION:
                    self._cancelled(conn, msg, t)
                continue
            task_method = method in TASK_METHODS
            if not task_method and method not in KIND_FOR_METHOD:
                continue
            key = id_key(msg.id)
            if key is None:
                continue
            params = self._params(msg)
            who = user if user is not None else conn.user
            if task_method:
                pending = self._task_request(method, params, t, who)
                if pending is None:
                    continue
            else:
                pending = self._request(conn, method, params, t, who)
            conn.pending[key] = pending
            keys.append(key)
            if len(conn.pending) > MAX_PENDING:
                del conn.pending[next(iter(conn.pending))]  # the oldest is forgotten, not recorded
        return keys

    def from_server(self, conn: Connection, data: bytes, t: float) -> None:
        """A message (or batch) the server sent: responses complete pending requests; a
        task status notification may end a task."""
        if not conn.pending and not self.calls.has_tasks:
            return  # nothing to match (notifications, logs): skip the parse entirely
        for msg in messages(data):
            if msg.method is not None:
                params = msg.params
                if msg.method == TASK_STATUS_NOTIFICATION and msg.id is UNSET and not isinstance(params, UnsetType):
                    self._task_state(result_of(params), t, None)
                continue  # a server→client request or notification
            if msg.id is UNSET:
                continue
            key = id_key(msg.id)
            pending = conn.pending.pop(key, None) if key is not None else None
            if pending is None:
                continue
            if pending.method in TASK_METHODS:
                self._task_response(pending, msg, t)
            else:
                self._response(conn, pending, msg, t)

    # ---- internals: requests ------------------------------------------------------------

    @staticmethod
    def _params(msg: Message) -> Params | None:
        if msg.params is UNSET:
            return None
        try:
            return decode_params(msg.params)
        except msgspec.DecodeError:
            return None  # positional (array) params or an odd shape: nothing to learn

    def _request(self, conn: Connection, method: str, params: Params | None, t: float, user: str | None) -> _Pending:
        tool = args_bytes = proposed = client = None
        if params is not None:
            proposed, client = self._learn_client(conn, method, params)
            if method == TOOLS_CALL:
                tool = clipped(params.name)
                if params.arguments is not UNSET:
                    args_bytes = len(params.arguments)
        if method == TOOLS_CALL and tool is None:
            tool = "(unknown)"
        # a handshake keeps the version the client proposes, until the answer says
        pending = _Pending(method, tool, t, args_bytes, user, proposed)
        pending.client = client
        if method == TOOLS_CALL:
            logical = None
            if params is not None and (params.request_state is not None or params.input_responses is not UNSET):
                logical = self.calls.resume(params.request_state, _fallback_key(conn, pending), t)
            pending.logical = logical if logical is not None else Logical((conn, pending), t)
        return pending

    def _task_request(self, method: str, params: Params | None, t: float, user: str | None) -> _Pending | None:
        """A tasks/* request about a task one of our calls created (others are not followed)."""
        task_id = params.task_id if params is not None else None
        logical = self.calls.task(task_id)
        if logical is None:
            return None
        if method != TASKS_CANCEL:
            logical.polls += 1
        pending = _Pending(method, None, t, None, user)
        pending.task_id = task_id
        return pending

    def _learn_client(self, conn: Connection, method: str, params: Params) -> tuple[str | None, tuple | None]:
        """Who is asking (clientInfo, or the 2026-07-28 ``meta_of`` every request carries).

        Returns the protocol version the request names (a handshake's proposal, or the
        2026-07-28 ``meta_of`` version of any request) and the client it names, if any.
        """
        meta = meta_of(params.meta)
        client = None
        if meta is not None:
            name, version = implementation(meta.client_info)
            if name:
                client = (name, version)
                conn.client_name, conn.client_version = name, version
            proposed = clipped(meta.protocol_version, MAX_PROTOCOL_VERSION)
            if method == SERVER_DISCOVER_METHOD:
                return proposed, client
            if proposed:
                conn.protocol_version = proposed
            if method != INITIALIZE_METHOD:
                return proposed, client
        if method == INITIALIZE_METHOD:
            name, version = implementation(params.client_info)
            if name:
                client = (name, version)
                conn.client_name, conn.client_version = name, version
            return clipped(params.protocol_version, MAX_PROTOCOL_VERSION), client
        return None, client

    def _cancelled(self, conn: Connection, msg: Message, t: float) -> None:
        params = self._params(msg)
        if params is None or params.request_id is UNSET:
            return
        key = id_key(params.request_id)
        if key is not None:
            self.abandon(conn, [key], CANCELLED, t, clipped(params.reason, MAX_ERROR_MESSAGE))

    # ---- internals: responses -----------------------------------------------------------

    def _response(self, conn: Connection, pending: _Pending, msg: Message, t: float) -> None:
        attributes: dict[str, Any] = {}
        ok, error_type, error_message, size = True, None, None, None
        protocol = None
        if msg.error is not UNSET:
            size = len(msg.error)
            ok = False
            error_type, error_message, code = error_of(msg.error)
            if code is not None:
                attributes["error_code"] = code
        elif msg.result is not UNSET:
            size = len(msg.result)
            result = result_of(msg.result)
            meta = meta_of(result.meta)
            if meta is not None and meta.server_info is not None:
                self._learn_server(meta.server_info)
            if pending.method == TOOLS_CALL:
                if self._unfinished(pending, result, t):
                    return  # input_required, or a task: the call goes on
                if result.is_error is True:
                    ok, error_type = False, TOOL_ERROR
                    error_message = first_text(result.content)
                    if self._known and pending.tool not in self._known:
                        error_type = UNKNOWN_TOOL  # a tool the server never listed: the caller's mistake
            elif pending.method == TOOLS_LIST:
                count = self._catalog(conn, result.tools, pending.start)
                if count is not None:
                    attributes["tools"] = count
            elif pending.method == INITIALIZE_METHOD:
                self._learn_server(result.server_info)
                protocol = clipped(result.protocol_version, MAX_PROTOCOL_VERSION)
                if protocol:
                    conn.protocol_version = protocol
            elif pending.method == SERVER_DISCOVER_METHOD:
                versions = result.supported_versions
                if isinstance(versions, list) and versions:
                    attributes["supported_versions"] = clipped(",".join(map(str, versions)), MAX_ATTRIBUTE_VALUE)
        else:
            return  # neither result nor error: not a response
        if pending.method == SERVER_DISCOVER_METHOD:
            attributes[METHOD_ATTRIBUTE] = SERVER_DISCOVER_METHOD
            # The version the client proposed; adopted when the probe succeeded.
            protocol = pending.protocol_version
            if ok and protocol:
                conn.protocol_version = protocol
        if pending.method in HANDSHAKE_METHODS:
            pending.protocol_version = protocol or pending.protocol_version
            if ok and self.server is None:
                self._resolve(None)  # the handshake is done: no serverInfo means none is coming
            self._announce(conn)
        elif self.server is None:
            self._resolve(None)
        self._emit_call(conn, pending, t, outcome(ok, error_type), error_type=error_type, error_message=error_message,
                        result_bytes=size, attributes=attributes or None)

    def _unfinished(self, pending: _Pending, result: Result, t: float) -> bool:
        """A tools/call result that is not final: input_required (the client will retry) or
        a task (its status will tell). The logical call is kept open."""
        logical = pending.logical
        if logical is None:
            return False
        if result.result_type == RESULT_TYPE_INPUT_REQUIRED:
            given_up = self.calls.wait_input(logical, result.request_state, _fallback_key(logical.data[0], pending), t)
            for lost in given_up:
                self._end(lost, t, OUTCOME_CANCELLED, CANCELLED, None, attributes={"reason": "no_retry"})
            return True
        task = result.task if isinstance(result.task, dict) else None
        if task is None and result.result_type != RESULT_TYPE_TASK:
            return False
        task_id = task.get("taskId") if task is not None else result.task_id
        if not isinstance(task_id, str) or not task_id:
            return False
        for lost in self.calls.start_task(logical, task_id):
            self._end(lost, t, OUTCOME_CANCELLED, CANCELLED, None, attributes={"reason": "too_many_open"})
        status = task.get("status") if task is not None else result.status
        if status in TASK_TERMINAL:  # created already finished
            self._task_state(result, t, None)
        return True

    def _task_response(self, pending: _Pending, msg: Message, t: float) -> None:
        """The answer to a tasks/get, tasks/result or tasks/cancel about one of our tasks."""
        logical = self.calls.task(pending.task_id)
        if logical is None:
            return  # its call ended already
        if msg.error is not UNSET:
            if pending.method == TASKS_RESULT:  # the call's own result is an error
                error_type, message, _ = error_of(msg.error)
                self.calls.end_task(pending.task_id)
                self._end(logical, t, outcome(False, error_type), error_type, message, len(msg.error))
            return  # a failed poll or cancel says nothing about the task
        if msg.result is UNSET:
            return
        result = result_of(msg.result)
        if pending.method == TASKS_RESULT:  # the call's own result (blocks until the task is over)
            self.calls.end_task(pending.task_id)
            failed = result.is_error is True
            self._end(logical, t, OUTCOME_TOOL_ERROR if failed else OUTCOME_OK, TOOL_ERROR if failed else None,
                      first_text(result.content) if failed else None, len(msg.result))
            return
        self._task_state(result, t, pending.task_id)

    def _task_state(self, result: Result, t: float, task_id: str | None) -> None:
        """A task's status (a tasks/get or tasks/cancel result, a status notification): a
        terminal one ends its call - completed is ok, failed a tool error (the spec's
        "isError: true" of a task), cancelled cancelled."""
        task = result.task if isinstance(result.task, dict) else {}
        status = result.status if isinstance(result.status, str) else task.get("status")
        if status not in TASK_TERMINAL:
            return
        task_id = task_id or (result.task_id if isinstance(result.task_id, str) else task.get("taskId"))
        logical = self.calls.end_task(task_id)
        if logical is None:
            return
        message = clipped(result.status_message if result.status_message is not None else task.get("statusMessage"),
                        MAX_ERROR_MESSAGE)
        size, failed = None, False
        if result.result is not UNSET:  # the final result, carried by the terminal status
            size = len(result.result)
            final = result_of(result.result)
            failed = final.is_error is True
            if failed:
                message = first_text(final.content) or message
        outcome_class, error_type = task_outcome(status, failed)
        self._end(logical, t, outcome_class, error_type, message if outcome_class != OUTCOME_OK else None, size)

    def _expire(self, t: float) -> None:
        self._next_expiry = t + EXPIRY_EVERY_S
        for logical in self.calls.expired(t):
            reason = "no_retry" if logical.task_id is None else "task_unfinished"
            self._end(logical, t, OUTCOME_CANCELLED, CANCELLED, None, attributes={"reason": reason})

    def _catalog(self, conn: Connection, tools: Raw | UnsetType, t: float) -> int | None:
        """One ``tool_listed`` event per tool a tools/list result names (its definition's
        size in ``result_bytes``); returns how many it named."""
        if tools is UNSET:
            return None
        try:
            definitions = decode_contents(tools)
        except msgspec.DecodeError:
            return None
        for raw in definitions:
            try:
                name = clipped(decode_tool(raw).name)
            except msgspec.DecodeError:
                continue
            if name is None:
                continue
            if len(self._known) < MAX_LISTED:
                self._known.add(name)
            self._emit(conn, TOOL_LISTED, ts=t, tool=name, result_bytes=len(raw),
                       attributes={DEFINITION_HASH_ATTRIBUTE: definition_hash(bytes(raw))})
        return len(definitions)

    # ---- internals: events --------------------------------------------------------------

    def _learn_server(self, info: Any) -> None:
        name, version = implementation(info)
        if version:
            self.server_version = version
        if name and (self.server is None or self._provisional):
            self._resolve(name)

    def _resolve(self, name: str | None) -> None:
        self.server = name or self._fallback
        self._provisional = name is None
        held, self._held = self._held, []
        for event in held:
            self._record(event)

    def _announce(self, conn: Connection) -> None:
        if conn.is_session and not conn.announced:
            conn.announced = True
            self._emit(conn, SESSION_START, ts=conn.started)

    def _end(self, logical: Logical, t: float, outcome_class: str, error_type: str | None, message: str | None,
             result_bytes: int | None = None, attributes: dict[str, Any] | None = None) -> None:
        """A logical call is over (outside the response of one of its requests)."""
        conn, first = logical.data
        self._emit_call(conn, first, t, outcome_class, error_type=error_type, error_message=message,
                        result_bytes=result_bytes, attributes=attributes)

    def _emit_call(self, conn: Connection, pending: _Pending, t: float, outcome_class: str, *, error_type: str | None,
                   error_message: str | None, result_bytes: int | None = None,
                   attributes: dict[str, Any] | None = None) -> None:
        logical = pending.logical
        start, first = pending.start, pending
        attrs = dict(attributes) if attributes else {}
        if logical is not None:  # one event for all its rounds, from the first request on
            conn, first = logical.data
            start = logical.start
            attrs.update(logical.attributes())
        attrs[OUTCOME_ATTRIBUTE] = outcome_class
        client = first.client or pending.client
        extra = {"client_name": client[0], "client_version": client[1]} if client else {}
        self._emit(
            conn, KIND_FOR_METHOD[first.method], ts=start, duration=t - start, tool=first.tool,
            ok=ok_for(outcome_class), error_type=error_type, error_message=error_message, user=first.user,
            protocol_version=first.protocol_version or conn.protocol_version, args_bytes=first.args_bytes,
            result_bytes=result_bytes, attributes=attrs, **extra,
        )

    def _emit(self, conn: Connection, kind: str, *, ts: float, duration: float | None = None,
              **fields: Any) -> None:
        event: dict[str, Any] = {
            "kind": kind,
            "ts": self._offset + ts,
            "session_id": conn.session_id,
            "client_name": conn.client_name,
            "client_version": conn.client_version,
            "protocol_version": conn.protocol_version,
            "user": conn.user,
            "transport": self.transport,
        }
        event.update(fields)
        if duration is not None:
            event["duration_ms"] = round(duration * 1000, 3)  # clamped to the wire's limit by Meter.record
        if self.server is None:
            self._held.append(event)
            if len(self._held) >= MAX_HELD:
                self._resolve(None)
        else:
            self._record(event)

    def _record(self, event: dict[str, Any]) -> None:
        tool = event.pop("tool", None)
        if event["kind"] == TOOL_LISTED:
            # The catalog is the server's, not a client's: no session, client or user, and one
            # event per (server, tool, definition, day) - the store drops the repeats.
            digest = event["attributes"][DEFINITION_HASH_ATTRIBUTE]
            day = int(event["ts"] // 86_400)
            key = (self.server, tool, digest, day)
            if key in self._listed:
                return
            if len(self._listed) >= MAX_LISTED:
                self._listed.clear()
            self._listed.add(key)
            event = {"kind": TOOL_LISTED, "ts": event["ts"], "transport": event["transport"],
                     "result_bytes": event["result_bytes"], "attributes": event["attributes"],
                     "id": catalog_event_id(self.server or "", tool or "", digest, day)}
        event = {k: v for k, v in event.items() if v is not None}
        self.meter.record(tool, server=self.server, server_version=self.server_version, **event)


def _fallback_key(conn: Connection, pending: _Pending) -> tuple:
    """What a retry without ``requestState`` is matched by: the same client asking the same tool."""
    return (conn.session_id if conn.is_session else None, pending.user, conn.client_name, pending.tool)

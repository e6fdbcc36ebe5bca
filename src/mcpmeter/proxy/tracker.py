"""What the proxies record: JSON-RPC request/response matching and event building.

Both transports (stdio and streamable HTTP) hand every client→server and server→client
message to one ``Tracker`` *after* forwarding it. The tracker never sits in the
forwarding path and never raises into it: a message it cannot read is simply not
tracked.

Reading is bounded: msgspec decodes only the few members we use (``id``, ``method``,
the tool name, ``isError``, ``serverInfo``…) into small structs, and keeps ``arguments``,
``result`` and ``content`` as raw slices of the input (no Python objects are built for
them). A 5 MB result is one allocation-free scan, and its size is exact: ``len`` of the
raw slice.

Sizes are those of the JSON values on the wire: ``args_bytes`` is the ``arguments``
object of a ``tools/call``, ``result_bytes`` the ``result`` (or ``error``) of its response.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

import msgspec
from msgspec import UNSET, Raw, Struct, UnsetType, field

from ..events import MAX_ATTRIBUTE_VALUE, MAX_ERROR_MESSAGE, MAX_PROTOCOL_VERSION, MAX_SHORT_TEXT, clip_text
from ..protocol import (
    CANCELLED_NOTIFICATION,
    CLIENT_INFO_META_KEY,
    HANDSHAKE_METHODS,
    INITIALIZE_METHOD,
    KIND_FOR_METHOD,
    METHOD_ATTRIBUTE,
    PROTOCOL_VERSION_META_KEY,
    SERVER_DISCOVER_METHOD,
    SERVER_INFO_META_KEY,
    SESSION_END,
    SESSION_START,
    TOOL_ERROR,
    TOOLS_CALL,
    error_type_for_code,
)

# The methods recorded are those with a kind of their own (protocol.KIND_FOR_METHOD). Both
# handshakes are kind "initialize", as every capture path records them; the 2026-07-28 one
# is told apart by its `mcp.method.name` attribute.
MAX_HELD = 1_000  # events kept while the server's name is unknown
MAX_PENDING = 100_000  # unanswered requests kept per connection (a misbehaving peer cannot grow it further)


# ---- wire views: only what we read --------------------------------------------------------


class _Message(Struct):
    id: Any = UNSET
    method: Any = None
    params: Raw | UnsetType = UNSET
    result: Raw | UnsetType = UNSET
    error: Raw | UnsetType = UNSET


class _Meta(Struct):
    protocol_version: Any = field(name=PROTOCOL_VERSION_META_KEY, default=None)
    client_info: Any = field(name=CLIENT_INFO_META_KEY, default=None)
    server_info: Any = field(name=SERVER_INFO_META_KEY, default=None)


class _Params(Struct):
    name: Any = None
    arguments: Raw | UnsetType = UNSET
    client_info: Any = field(name="clientInfo", default=None)
    protocol_version: Any = field(name="protocolVersion", default=None)
    request_id: Any = field(name="requestId", default=UNSET)
    reason: Any = None
    meta: Any = field(name="_meta", default=None)


class _Result(Struct):
    is_error: Any = field(name="isError", default=False)
    content: Raw | UnsetType = UNSET
    server_info: Any = field(name="serverInfo", default=None)
    protocol_version: Any = field(name="protocolVersion", default=None)
    supported_versions: Any = field(name="supportedVersions", default=None)
    meta: Any = field(name="_meta", default=None)


class _Error(Struct):
    code: Any = None
    message: Any = None


class _Content(Struct):
    type: Any = None
    text: Any = None


_decode_message = msgspec.json.Decoder(_Message | list[Raw]).decode
_decode_item = msgspec.json.Decoder(_Message).decode
_decode_params = msgspec.json.Decoder(_Params).decode
_decode_result = msgspec.json.Decoder(_Result).decode
_decode_error = msgspec.json.Decoder(_Error).decode
_decode_contents = msgspec.json.Decoder(list[Raw]).decode
_decode_content = msgspec.json.Decoder(_Content).decode


def messages(data: bytes) -> list[_Message]:
    """The JSON-RPC messages in one line/body (a batch is a JSON array); [] if unreadable."""
    try:
        parsed = _decode_message(data)
    except msgspec.DecodeError:
        return []
    if isinstance(parsed, _Message):
        return [parsed]
    out = []
    for raw in parsed:
        try:
            out.append(_decode_item(raw))
        except msgspec.DecodeError:
            continue
    return out


def id_key(value: Any) -> tuple | None:
    """A dict key for a JSON-RPC id: 1 and "1" are different ids; null and bools match nothing."""
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return ("n", value)
    return None


def _text(value: Any, limit: int = MAX_SHORT_TEXT) -> str | None:
    """A text member of a message, clipped; anything that is not non-empty text is None."""
    if not isinstance(value, str) or not value:
        return None
    return clip_text(value, limit)


def _implementation(info: Any) -> tuple[str | None, str | None]:
    if not isinstance(info, dict):
        return None, None
    return _text(info.get("name")), _text(info.get("version"))


def _meta(value: Any) -> _Meta | None:
    if not isinstance(value, dict):
        return None
    return _Meta(value.get(PROTOCOL_VERSION_META_KEY), value.get(CLIENT_INFO_META_KEY), value.get(SERVER_INFO_META_KEY))


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

    __slots__ = ("args_bytes", "method", "protocol_version", "start", "tool", "user")

    def __init__(self, method: str, tool: str | None, start: float, args_bytes: int | None,
                 user: str | None, protocol_version: str | None = None) -> None:
        self.method = method
        self.tool = tool
        self.start = start
        self.args_bytes = args_bytes
        self.user = user
        self.protocol_version = protocol_version


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
    """

    def __init__(self, meter, *, transport: str, server: str | None = None, fallback_server: str | None = None) -> None:
        self.meter = meter
        self.transport = transport
        self.server = _text(server)
        self.server_version: str | None = None
        self._fallback = _text(fallback_server) or self.server or "mcp-server"
        self._provisional = False  # the name is the fallback: serverInfo may still replace it
        self._held: list[dict[str, Any]] = []
        self._offset = time.time() - time.perf_counter()

    # ---- lifecycle ----------------------------------------------------------------------

    def close(self, conn: Connection, reason: str, t: float | None = None,
              attributes: dict[str, Any] | None = None) -> None:
        """The conversation ended: unanswered requests fail with ``reason``; session_end."""
        t = time.perf_counter() if t is None else t
        self._announce(conn)
        self.abandon(conn, list(conn.pending), reason, t)
        if conn.is_session:
            attrs = {"reason": reason, **(attributes or {})}
            self._emit(conn, SESSION_END, ts=t, duration=t - conn.started, attributes=attrs)

    def finish(self) -> None:
        """Release held events (the name is whatever we know by now) - call before shutdown."""
        if self.server is None:
            self._resolve(None)

    def abandon(self, conn: Connection, keys: Iterable[tuple], reason: str, t: float | None = None,
                message: str | None = None) -> None:
        """Requests that will get no response (cancelled, server gone…) are failures."""
        t = time.perf_counter() if t is None else t
        for key in keys:
            pending = conn.pending.pop(key, None)
            if pending is not None:
                self._emit_call(conn, pending, t, ok=False, error_type=reason, error_message=message)

    # ---- traffic ------------------------------------------------------------------------

    def from_client(self, conn: Connection, data: bytes, t: float, user: str | None = None) -> list[tuple]:
        """A message (or batch) the client sent; returns the keys of the requests registered."""
        keys: list[tuple] = []
        for msg in messages(data):
            method = msg.method
            if not isinstance(method, str):
                continue  # a response to a server→client request, or not JSON-RPC
            if msg.id is UNSET:
                if method == CANCELLED_NOTIFICATION:
                    self._cancelled(conn, msg, t)
                continue
            if method not in KIND_FOR_METHOD:
                continue
            key = id_key(msg.id)
            if key is None:
                continue
            params = self._params(msg)
            tool = args_bytes = proposed = None
            if params is not None:
                proposed = self._learn_client(conn, method, params)
                if method == TOOLS_CALL:
                    tool = _text(params.name)
                    if params.arguments is not UNSET:
                        args_bytes = len(params.arguments)
            if method == TOOLS_CALL and tool is None:
                tool = "(unknown)"
            # a handshake keeps the version the client proposes, until the answer says
            conn.pending[key] = _Pending(method, tool, t, args_bytes, user if user is not None else conn.user, proposed)
            keys.append(key)
            if len(conn.pending) > MAX_PENDING:
                del conn.pending[next(iter(conn.pending))]  # the oldest is forgotten, not recorded
        return keys

    def from_server(self, conn: Connection, data: bytes, t: float) -> None:
        """A message (or batch) the server sent: responses complete pending requests."""
        if not conn.pending:
            return  # nothing to match (notifications, logs): skip the parse entirely
        for msg in messages(data):
            if msg.method is not None or msg.id is UNSET:
                continue  # a server→client request or notification
            key = id_key(msg.id)
            pending = conn.pending.pop(key, None) if key is not None else None
            if pending is None:
                continue
            self._response(conn, pending, msg, t)

    # ---- internals ----------------------------------------------------------------------

    @staticmethod
    def _params(msg: _Message) -> _Params | None:
        if msg.params is UNSET:
            return None
        try:
            return _decode_params(msg.params)
        except msgspec.DecodeError:
            return None  # positional (array) params or an odd shape: nothing to learn

    def _learn_client(self, conn: Connection, method: str, params: _Params) -> str | None:
        """Who is asking (clientInfo, or the 2026-07-28 ``_meta`` every request carries).

        Returns the protocol version a handshake request proposes.
        """
        meta = _meta(params.meta)
        if meta is not None:
            name, version = _implementation(meta.client_info)
            if name:
                conn.client_name, conn.client_version = name, version
            proposed = _text(meta.protocol_version, MAX_PROTOCOL_VERSION)
            if method == SERVER_DISCOVER_METHOD:
                return proposed
            if proposed:
                conn.protocol_version = proposed
        if method == INITIALIZE_METHOD:
            name, version = _implementation(params.client_info)
            if name:
                conn.client_name, conn.client_version = name, version
            return _text(params.protocol_version, MAX_PROTOCOL_VERSION)
        return None

    def _cancelled(self, conn: Connection, msg: _Message, t: float) -> None:
        params = self._params(msg)
        if params is None or params.request_id is UNSET:
            return
        key = id_key(params.request_id)
        if key is not None:
            self.abandon(conn, [key], "cancelled", t, _text(params.reason, MAX_ERROR_MESSAGE))

    def _response(self, conn: Connection, pending: _Pending, msg: _Message, t: float) -> None:
        attributes: dict[str, Any] = {}
        ok, error_type, error_message, size = True, None, None, None
        protocol = None
        if msg.error is not UNSET:
            size = len(msg.error)
            ok = False
            try:
                err = _decode_error(msg.error)
            except msgspec.DecodeError:
                err = _Error()
            # a code that is not a number is no JSON-RPC code at all
            error_type = error_type_for_code(err.code if isinstance(err.code, int) else None)
            error_message = _text(err.message, MAX_ERROR_MESSAGE)
            if isinstance(err.code, int):
                attributes["error_code"] = err.code
        elif msg.result is not UNSET:
            size = len(msg.result)
            try:
                result = _decode_result(msg.result)
            except msgspec.DecodeError:
                result = _Result()
            meta = _meta(result.meta)
            if meta is not None and meta.server_info is not None:
                self._learn_server(meta.server_info)
            if pending.method == TOOLS_CALL and result.is_error is True:
                ok, error_type = False, TOOL_ERROR
                error_message = _first_text(result.content)
            elif pending.method == INITIALIZE_METHOD:
                self._learn_server(result.server_info)
                protocol = _text(result.protocol_version, MAX_PROTOCOL_VERSION)
                if protocol:
                    conn.protocol_version = protocol
            elif pending.method == SERVER_DISCOVER_METHOD:
                versions = result.supported_versions
                if isinstance(versions, list) and versions:
                    attributes["supported_versions"] = _text(",".join(map(str, versions)), MAX_ATTRIBUTE_VALUE)
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
        self._emit_call(conn, pending, t, ok=ok, error_type=error_type, error_message=error_message,
                        result_bytes=size, attributes=attributes or None)

    def _learn_server(self, info: Any) -> None:
        name, version = _implementation(info)
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

    def _emit_call(self, conn: Connection, pending: _Pending, t: float, *, ok: bool, error_type: str | None,
                   error_message: str | None, result_bytes: int | None = None,
                   attributes: dict[str, Any] | None = None) -> None:
        self._emit(
            conn, KIND_FOR_METHOD[pending.method], ts=pending.start, duration=t - pending.start, tool=pending.tool,
            ok=ok, error_type=error_type, error_message=error_message, user=pending.user,
            protocol_version=pending.protocol_version or conn.protocol_version, args_bytes=pending.args_bytes,
            result_bytes=result_bytes, attributes=attributes,
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
        event = {k: v for k, v in event.items() if v is not None}
        self.meter.record(tool, server=self.server, server_version=self.server_version, **event)


def _first_text(content: Raw | UnsetType) -> str | None:
    """The first text content block of a result (the message of a failed tool call)."""
    if content is UNSET:
        return None
    try:
        items = _decode_contents(content)
    except msgspec.DecodeError:
        return None
    for raw in items[:16]:
        try:
            block = _decode_content(raw)
        except msgspec.DecodeError:
            continue
        if block.type == "text" and isinstance(block.text, str):
            return _text(block.text, MAX_ERROR_MESSAGE)
    return None

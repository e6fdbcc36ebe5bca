"""The MCP vocabulary mcpmeter records in: event kinds, method -> kind, JSON-RPC error names.

One table for every capture path - ``meter.instrument()`` (sdk/integrations), the proxy
(proxy/tracker) and the OTLP receiver (server/collector/otlp) - so that one server measured
in-process, through the proxy or through OpenTelemetry spans produces the same kinds and
the same error types. Nothing here imports anything: every layer may use it.
"""

from __future__ import annotations

import re
from typing import Final

# ---- event kinds -------------------------------------------------------------------------

TOOL_CALL: Final = "tool_call"  # tools/call: the event the usage questions count
LIST_TOOLS: Final = "list_tools"  # tools/list
INITIALIZE: Final = "initialize"  # initialize, and the 2026-07-28 server/discover
SERVER_DISCOVER: Final = "server_discover"  # a hand-recorded server/discover (a handshake too)
SESSION_START: Final = "session_start"  # the proxy saw a conversation begin
SESSION_END: Final = "session_end"  # ... and end (attributes.reason says why)
TOOL_LISTED: Final = "tool_listed"  # one tool of the catalog a server advertises
SDK_DROPPED: Final = "sdk.dropped"  # a recorder's report of what it dropped, by reason
AUTH: Final = "auth"  # an authorization outcome reported by a server
# Reported through the MCP gateway's metrics-service API (POST /metrics; server/collector/gateway.py):
PROTOCOL_LATENCY: Final = "protocol_latency"  # time between two protocol steps (attributes.flow_step)
HEALTH_CHECK: Final = "health_check"  # a health probe of a server (ok = healthy)
REGISTRY_OPERATION: Final = "registry_operation"  # a change or read of the gateway's registry
GATEWAY_KINDS: Final = frozenset({PROTOCOL_LATENCY, HEALTH_CHECK, REGISTRY_OPERATION})

HANDSHAKE_KINDS: Final = (INITIALIZE, SERVER_DISCOVER)

# ---- methods -----------------------------------------------------------------------------

TOOLS_CALL: Final = "tools/call"
TOOLS_LIST: Final = "tools/list"
INITIALIZE_METHOD: Final = "initialize"
SERVER_DISCOVER_METHOD: Final = "server/discover"  # the 2026-07-28 revision's opening request
CANCELLED_NOTIFICATION: Final = "notifications/cancelled"

# The two ways a client opens a conversation. ``server/discover`` has no ``initialize``, so
# both are recorded as kind ``initialize``, told apart by the ``mcp.method.name`` attribute.
HANDSHAKE_METHODS: Final = frozenset({INITIALIZE_METHOD, SERVER_DISCOVER_METHOD})
METHOD_ATTRIBUTE: Final = "mcp.method.name"  # the OpenTelemetry MCP semantic conventions' name

# MCP method -> event kind, for the methods with a kind of their own. Any other method keeps
# its name in kind form (``kind_for_method``).
KIND_FOR_METHOD: Final[dict[str, str]] = {
    TOOLS_CALL: TOOL_CALL,
    TOOLS_LIST: LIST_TOOLS,
    INITIALIZE_METHOD: INITIALIZE,
    SERVER_DISCOVER_METHOD: INITIALIZE,
}

# The requests a client sends and a server answers, as the exporters name them.
MCP_METHODS: Final = (
    "initialize", "ping", "tools/list", "tools/call", "resources/list", "resources/templates/list",
    "resources/read", "resources/subscribe", "resources/unsubscribe", "prompts/list", "prompts/get",
    "completion/complete", "logging/setLevel", "server/discover", "tasks/get", "tasks/list",
    "tasks/result", "tasks/cancel",
)

_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")
_NOT_KIND = re.compile(r"[^a-z0-9_./]")


def kind_for_method(method: str) -> str | None:
    """The event kind for an MCP method; other methods keep their name in kind form.

    ``resources/read`` stays ``resources/read``; ``logging/setLevel`` becomes
    ``logging/set_level``. None when nothing usable is left.
    """
    kind = KIND_FOR_METHOD.get(method)
    if kind is not None:
        return kind
    kind = _NOT_KIND.sub("_", _CAMEL.sub(r"_\1", method).lower()).strip("_./")[:64]
    return kind if kind and kind[0].isalpha() else None


def _method_for_kind() -> dict[str, str]:
    table: dict[str, str] = {}
    for method in reversed(MCP_METHODS):  # the first method of a kind wins (initialize over server/discover)
        kind = kind_for_method(method)
        if kind is not None:
            table[kind] = method
    table[SERVER_DISCOVER] = SERVER_DISCOVER_METHOD
    return table


# Event kind -> the MCP method it records (the exporters' ``mcp.method.name``).
METHOD_FOR_KIND: Final[dict[str, str]] = _method_for_kind()

# ---- errors ------------------------------------------------------------------------------

# JSON-RPC 2.0 and MCP error codes -> the error_type they are recorded as (mcp_types.jsonrpc
# names them). Other codes are recorded as their number.
ERROR_NAMES: Final[dict[int, str]] = {
    -32700: "parse_error",
    -32600: "invalid_request",
    -32601: "method_not_found",
    -32602: "invalid_params",
    -32603: "internal_error",
    -32002: "resource_not_found",
    -32020: "header_mismatch",
    -32021: "missing_required_client_capability",
    -32022: "unsupported_protocol_version",
    -32042: "url_elicitation_required",
}

TOOL_ERROR: Final = "tool_error"  # a tools/call result with isError: true (the semconv's value)
JSONRPC_ERROR: Final = "jsonrpc_error"  # an error response without a usable code


def error_type_for_code(code: object) -> str:
    """``-32602`` (or ``"-32602"``, as OTLP attributes carry it) -> ``invalid_params``.

    Unknown codes stay as their number; text that is no number stays as it is; anything
    else (null, a bool, an object: no code at all) is ``jsonrpc_error``.
    """
    if isinstance(code, bool) or not isinstance(code, (int, str)):
        return JSONRPC_ERROR
    if isinstance(code, str):
        try:
            number = int(code)
        except ValueError:
            return code
    else:
        number = code
    return ERROR_NAMES.get(number, str(number))


# ---- the 2026-07-28 revision's ``_meta`` keys (mcp_types: PROTOCOL_VERSION_META_KEY, ...) ---

PROTOCOL_VERSION_META_KEY: Final = "io.modelcontextprotocol/protocolVersion"
CLIENT_INFO_META_KEY: Final = "io.modelcontextprotocol/clientInfo"
SERVER_INFO_META_KEY: Final = "io.modelcontextprotocol/serverInfo"

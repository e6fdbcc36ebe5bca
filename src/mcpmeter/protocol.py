"""The MCP vocabulary mcpmeter records in: event kinds, method -> kind, JSON-RPC error names.

One table for every capture path - ``meter.instrument()`` (sdk/integrations), the proxy
(proxy/tracker) and the OTLP receiver (server/collector/otlp) - so that one server measured
in-process, through the proxy or through OpenTelemetry spans produces the same kinds and
the same error types, the same outcome classes and the same logical calls. Nothing here
imports from mcpmeter: every layer may use it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
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
TASKS_GET: Final = "tasks/get"  # the tasks extension's poll (never a call of its own)
TASKS_RESULT: Final = "tasks/result"  # ... its blocking read of the final result
TASKS_CANCEL: Final = "tasks/cancel"
TASK_STATUS_NOTIFICATION: Final = "notifications/tasks/status"
TASK_METHODS: Final = frozenset({TASKS_GET, TASKS_RESULT, TASKS_CANCEL})
TASKS_EXTENSION: Final = "io.modelcontextprotocol/tasks"

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


# ---- one logical call: rounds, tasks, outcomes ------------------------------------------------
#
# A ``tools/call`` is ONE call from the client's first request to its final result:
# - 2026-07-28 multi round-trip: a result with ``resultType: "input_required"`` is not final;
#   the client retries with ``inputResponses``/``requestState`` under a new request id. The
#   rounds are one call; ``mcp.rounds`` counts the requests, ``mcp.input_ms`` the time spent
#   between an input_required answer and the retry (the user answering).
# - the tasks extension: a result that is a task (``resultType: "task"``, or the 2025-11-25
#   ``CreateTaskResult`` ``{"task": {...}}``) is not final either; the task's terminal status
#   (``tasks/get``, ``tasks/result``, ``tasks/cancel``, ``notifications/tasks/status``) is the
#   call's outcome and the end of its duration. Polls are not calls (``mcp.task_polls``).

RESULT_TYPE_INPUT_REQUIRED: Final = "input_required"
RESULT_TYPE_TASK: Final = "task"
TASK_TERMINAL: Final = frozenset({"completed", "failed", "cancelled"})

ROUNDS_ATTRIBUTE: Final = "mcp.rounds"  # requests one logical call took (present when > 1)
INPUT_MS_ATTRIBUTE: Final = "mcp.input_ms"  # time waiting for the client's input between rounds
TASK_POLLS_ATTRIBUTE: Final = "mcp.task_polls"  # tasks/get and tasks/result requests a task call took
OUTCOME_ATTRIBUTE: Final = "mcp.outcome"  # the outcome class of a request event (below)

# The outcome class of every request event: exactly one of these.
OUTCOME_OK: Final = "ok"
OUTCOME_TOOL_ERROR: Final = "tool_error"  # the tool ran and failed (a result with isError: true)
OUTCOME_SERVER_ERROR: Final = "server_error"  # the server failed the request (internal error, crash, gone)
OUTCOME_CALLER_ERROR: Final = "caller_error"  # the request was wrong (bad JSON-RPC, unknown method/tool/resource)
OUTCOME_CANCELLED: Final = "cancelled"  # the client gave up (cancelled, disconnected): neither success nor error
OUTCOMES: Final = (OUTCOME_OK, OUTCOME_TOOL_ERROR, OUTCOME_SERVER_ERROR, OUTCOME_CALLER_ERROR, OUTCOME_CANCELLED)

CANCELLED: Final = "cancelled"  # the error_type of a cancelled request (its ``ok`` is null)

# The OpenTelemetry MCP conventions' caller errors: the client asked for something wrong.
# -32602 includes calling a tool that does not exist (the event keeps the name tried).
CALLER_ERROR_TYPES: Final = frozenset({
    "parse_error", "invalid_request", "method_not_found", "invalid_params", "resource_not_found",
})
# A call to a tool the server does not list: what -32602 servers answer, and what a server
# answering ``isError: "Unknown tool"`` (MCPServer, FastMCP) is recorded as when the capture
# path knows the server's tools - so the same client mistake reads the same everywhere.
UNKNOWN_TOOL: Final = "invalid_params"
# The JSON-RPC names that are the server's fault (every other code, named or not, too).
_SERVER_ERROR_TYPES: Final = frozenset(set(ERROR_NAMES.values()) - CALLER_ERROR_TYPES | {JSONRPC_ERROR})


def outcome(ok: bool | None, error_type: str | None, *, raised_by_tool: bool = False) -> str:
    """The outcome class of a request, as every capture path records it (``mcp.outcome``).

    ``raised_by_tool``: the error type names an exception the tool's own code raised (the
    in-process paths know it); otherwise a name that is no JSON-RPC error is taken as the
    server's failure (an exception escaping the server, a crash seen by the proxy).
    """
    if error_type == CANCELLED:
        return OUTCOME_CANCELLED
    if ok or (ok is None and error_type is None):
        return OUTCOME_OK
    if error_type in CALLER_ERROR_TYPES:
        return OUTCOME_CALLER_ERROR
    if error_type == TOOL_ERROR or raised_by_tool:
        return OUTCOME_TOOL_ERROR
    return OUTCOME_SERVER_ERROR


def outcome_of(ok: bool | None, error_type: str | None, attributes: Mapping[str, object] | None = None) -> str:
    """The outcome class of a stored event: its ``mcp.outcome`` when a capture path recorded
    one, else derived from ``ok``/``error_type`` (events sent by hand or by ``@meter.tool``,
    where an error type that is no JSON-RPC name is an exception of the tool's code)."""
    if attributes:
        recorded = attributes.get(OUTCOME_ATTRIBUTE)
        if isinstance(recorded, str) and recorded in OUTCOMES:
            return recorded
    return outcome(ok, error_type, raised_by_tool=error_type is not None and error_type not in _SERVER_ERROR_TYPES
                   and not error_type.lstrip("-").isdigit())


def task_outcome(status: str, final_is_error: bool = False) -> tuple[str, str | None]:
    """(outcome class, error_type) of a call that ran as a task and reached ``status``
    (one of ``TASK_TERMINAL``): completed is ok (unless its final result says isError),
    failed a tool error - the spec's status for a task whose result has isError - and
    cancelled cancelled."""
    if status == "cancelled":
        return OUTCOME_CANCELLED, CANCELLED
    if status == "completed" and not final_is_error:
        return OUTCOME_OK, None
    return OUTCOME_TOOL_ERROR, TOOL_ERROR


def ok_for(outcome_class: str) -> bool | None:
    """The ``ok`` an event of an outcome class carries: cancelled is neither."""
    if outcome_class == OUTCOME_CANCELLED:
        return None
    return outcome_class == OUTCOME_OK


# ---- the catalog: the tools a tools/list result names -------------------------------------------

DEFINITION_HASH_ATTRIBUTE: Final = "definition_sha256"  # first 16 hex digits of the definition's JSON
CATALOG_ID_PREFIX: Final = "cat-"


def definition_hash(definition: bytes) -> str:
    """A short, stable digest of one tool definition as it was on the wire."""
    return hashlib.sha256(definition).hexdigest()[:16]


def catalog_event_id(server: str, tool: str, digest: str, day: int) -> str:
    """The id of the ``tool_listed`` event for (server, tool, definition, UTC day number).

    Deterministic, so a tool listed on every conversation is stored once a day per
    definition (the store drops repeated ids) and the catalog's counts are not inflated.
    """
    key = hashlib.sha256(f"{server}\0{tool}\0{digest}\0{day}".encode()).hexdigest()[:40]
    return CATALOG_ID_PREFIX + key

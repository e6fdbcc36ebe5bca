"""How MCP requests become events: shared by ``Meter.instrument()`` and the OTLP receiver.

One table, so that a server measured in-process and the same server measured through
OpenTelemetry spans produce the same kinds and the same error types.
"""

from __future__ import annotations

import re

# MCP method -> event kind. ``server/discover`` is the 2026-07-28 protocol's opening
# request (it has no ``initialize``), so both count as the client connecting.
KIND_FOR_METHOD = {
    "tools/call": "tool_call",
    "tools/list": "list_tools",
    "initialize": "initialize",
    "server/discover": "initialize",
}

# JSON-RPC error codes (as MCP uses them) -> readable error types.
ERROR_NAMES = {
    -32700: "parse_error",
    -32600: "invalid_request",
    -32601: "method_not_found",
    -32602: "invalid_params",
    -32603: "internal_error",
    -32002: "resource_not_found",
    -32042: "url_elicitation_required",
}

TOOL_ERROR = "tool_error"  # a tools/call result with isError: true (the semconv's value)

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


def error_type_for_code(code: int | str) -> str:
    """``-32602`` -> ``invalid_params``; unknown codes stay as their number."""
    try:
        number = int(code)
    except (TypeError, ValueError):
        return str(code)
    return ERROR_NAMES.get(number, str(number))

"""The JSON-RPC the proxy reads: msgspec views of only the members it uses, and small readers.

``arguments``, ``result``, ``content`` and tool definitions stay raw slices of the input
(no Python objects are built for them), so their sizes are exact and a 5 MB result is one
allocation-free scan.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, Raw, Struct, UnsetType, field

from ..events import MAX_ERROR_MESSAGE, MAX_SHORT_TEXT, clip_text
from ..protocol import CLIENT_INFO_META_KEY, PROTOCOL_VERSION_META_KEY, SERVER_INFO_META_KEY, error_type_for_code

# ---- wire views: only what we read --------------------------------------------------------


class Message(Struct):
    id: Any = UNSET
    method: Any = None
    params: Raw | UnsetType = UNSET
    result: Raw | UnsetType = UNSET
    error: Raw | UnsetType = UNSET


class Meta(Struct):
    protocol_version: Any = field(name=PROTOCOL_VERSION_META_KEY, default=None)
    client_info: Any = field(name=CLIENT_INFO_META_KEY, default=None)
    server_info: Any = field(name=SERVER_INFO_META_KEY, default=None)


class Params(Struct):
    name: Any = None
    arguments: Raw | UnsetType = UNSET
    client_info: Any = field(name="clientInfo", default=None)
    protocol_version: Any = field(name="protocolVersion", default=None)
    request_id: Any = field(name="requestId", default=UNSET)
    reason: Any = None
    meta: Any = field(name="_meta", default=None)
    request_state: Any = field(name="requestState", default=None)
    input_responses: Raw | UnsetType = field(name="inputResponses", default=UNSET)
    task_id: Any = field(name="taskId", default=None)


class Result(Struct):
    is_error: Any = field(name="isError", default=False)
    content: Raw | UnsetType = UNSET
    server_info: Any = field(name="serverInfo", default=None)
    protocol_version: Any = field(name="protocolVersion", default=None)
    supported_versions: Any = field(name="supportedVersions", default=None)
    meta: Any = field(name="_meta", default=None)
    result_type: Any = field(name="resultType", default=None)
    request_state: Any = field(name="requestState", default=None)
    tools: Raw | UnsetType = UNSET  # a tools/list result's definitions
    task: Any = None  # a task created (tools/call) or reported (tasks/get of the 2026 extension)
    task_id: Any = field(name="taskId", default=None)  # a 2025-11-25 tasks/get result, or a status notification
    status: Any = None
    status_message: Any = field(name="statusMessage", default=None)
    result: Raw | UnsetType = UNSET  # the final result a terminal tasks/get may carry


class ToolView(Struct):
    name: Any = None


class Error(Struct):
    code: Any = None
    message: Any = None


class Content(Struct):
    type: Any = None
    text: Any = None


decode_message = msgspec.json.Decoder(Message | list[Raw]).decode
decode_item = msgspec.json.Decoder(Message).decode
decode_params = msgspec.json.Decoder(Params).decode
decode_result = msgspec.json.Decoder(Result).decode
decode_error = msgspec.json.Decoder(Error).decode
decode_contents = msgspec.json.Decoder(list[Raw]).decode
decode_content = msgspec.json.Decoder(Content).decode
decode_tool = msgspec.json.Decoder(ToolView).decode


def messages(data: bytes) -> list[Message]:
    """The JSON-RPC messages in one line/body (a batch is a JSON array); [] if unreadable."""
    try:
        parsed = decode_message(data)
    except msgspec.DecodeError:
        return []
    if isinstance(parsed, Message):
        return [parsed]
    out = []
    for raw in parsed:
        try:
            out.append(decode_item(raw))
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


def clipped(value: Any, limit: int = MAX_SHORT_TEXT) -> str | None:
    """A text member of a message, clipped; anything that is not non-empty text is None."""
    if not isinstance(value, str) or not value:
        return None
    return clip_text(value, limit)


def implementation(info: Any) -> tuple[str | None, str | None]:
    if not isinstance(info, dict):
        return None, None
    return clipped(info.get("name")), clipped(info.get("version"))


def meta_of(value: Any) -> Meta | None:
    if not isinstance(value, dict):
        return None
    return Meta(value.get(PROTOCOL_VERSION_META_KEY), value.get(CLIENT_INFO_META_KEY), value.get(SERVER_INFO_META_KEY))


def result_of(raw: Raw) -> Result:
    try:
        return decode_result(raw)
    except msgspec.DecodeError:
        return Result()


def error_of(raw: Raw) -> tuple[str, str | None, int | None]:
    """(error_type, message, code) of a JSON-RPC error object."""
    try:
        err = decode_error(raw)
    except msgspec.DecodeError:
        err = Error()
    # a code that is not a number is no JSON-RPC code at all
    code = err.code if isinstance(err.code, int) and not isinstance(err.code, bool) else None
    return error_type_for_code(code), clipped(err.message, MAX_ERROR_MESSAGE), code


def first_text(content: Raw | UnsetType) -> str | None:
    """The first text content block of a result (the message of a failed tool call)."""
    if content is UNSET:
        return None
    try:
        items = decode_contents(content)
    except msgspec.DecodeError:
        return None
    for raw in items[:16]:
        try:
            block = decode_content(raw)
        except msgspec.DecodeError:
            continue
        if block.type == "text" and isinstance(block.text, str):
            return clipped(block.text, MAX_ERROR_MESSAGE)
    return None

"""The capture tests' client side: the real MCP SDK client driving ``rounds_server`` the way a
user would, keeping a ledger of what it saw, and reading back what was stored."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import anyio
from mcp import Client
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, ElicitResult, Implementation, Request, RequestParams, Result
from pydantic import ConfigDict, Field, TypeAdapter

from foundation_helpers import stored_events
from mcpmeter.storage import open_store

SCRIPT_PATH = Path(__file__).resolve().parent / "capture" / "rounds_server.py"
SERVER = [sys.executable, str(SCRIPT_PATH)]
TASKS = "io.modelcontextprotocol/tasks"
CLIENT = Implementation(name="capture-client", version="4.5.6")
_anything = TypeAdapter(dict[str, Any])


class TaskParams(RequestParams):
    model_config = ConfigDict(populate_by_name=True)
    task_id: str = Field(alias="taskId")


class GetTask(Request[TaskParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    params: TaskParams


class TaskCreated(Result):
    result_type: Literal["task"] = Field("task", alias="resultType")
    task: dict[str, Any]


class TasksClient(ClientExtension):
    """The client half of the tasks extension: poll tasks/get until the task is over."""

    identifier = TASKS

    def __init__(self) -> None:
        self.polls = 0

    def claims(self):
        return [ResultClaim(result_type="task", model=TaskCreated, resolve=self.resolve)]

    async def resolve(self, created: TaskCreated, ctx: ClaimContext) -> CallToolResult:
        task_id = created.task["taskId"]
        while True:
            self.polls += 1
            answer = await ctx.session.send_request(GetTask(params=TaskParams(task_id=task_id)), _anything)
            status = answer["task"]["status"]
            if status == "completed":
                return CallToolResult.model_validate(answer["result"])
            if status in ("failed", "cancelled"):
                return CallToolResult.model_validate({"content": [{"type": "text", "text": status}], "isError": True})
            await anyio.sleep(0.01)


async def answer(context: Any, params: Any) -> ElicitResult:
    """The user: confirms everything but transferring 13."""
    return ElicitResult(action="accept", content={"confirm": "13" not in params.message})


# (tool, arguments, outcome class the client sees, requests a 2026-07-28 client sends)
SCRIPT = [
    ("forecast", {"city": "Oslo"}, "ok", 1),
    ("forecast", {"city": "Atlantis"}, "tool_error", 1),
    ("delete_file", {"path": "/tmp/a"}, "ok", 2),
    ("delete_file", {"path": "/tmp/b"}, "ok", 2),
    ("delete_file", {"path": "/tmp/c"}, "ok", 2),
    ("transfer", {"amount": 13}, "ok", 3),
    ("no_such_tool", {}, "caller_error", 1),
    ("explode", {}, "server_error", 1),
]
TASK_SCRIPT = [
    ("long_job", {"steps": 3, "outcome": "completed"}, "ok", 1),
    ("long_job", {"steps": 2, "outcome": "failed"}, "tool_error", 1),
]


async def drive(target: Any, mode: str, *, tasks: bool = False) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Lists the tools, makes every call of the script (and the task calls when the protocol
    has them); returns (tool, outcome class) as the client saw each call, and the size of
    each tool definition it received."""
    extension = TasksClient()
    seen: list[tuple[str, str]] = []
    async with Client(target, mode=mode, client_info=CLIENT, elicitation_callback=answer, cache=None,
                      extensions=[extension] if tasks else []) as client:
        listed = (await client.list_tools()).tools
        assert len(listed) == 18
        sizes = definitions(listed)
        for tool, arguments, expected, _ in SCRIPT + (TASK_SCRIPT if tasks else []):
            try:
                result = await client.call_tool(tool, arguments)
                outcome = "tool_error" if result.is_error else "ok"
                if result.is_error and result.content and "Unknown tool" in getattr(result.content[0], "text", ""):
                    outcome = "caller_error"  # what the client reads: it asked for a tool that does not exist
            except MCPError as exc:
                outcome = "caller_error" if exc.error.code in (-32700, -32600, -32601, -32602, -32002) else "server_error"
            assert outcome == expected, (tool, arguments, outcome)
            seen.append((tool, outcome))
        with anyio.move_on_after(0.5):  # the user presses stop: notifications/cancelled
            await client.call_tool("slow", {"seconds": 30})
        seen.append(("slow", "cancelled"))
        await client.call_tool("forecast", {"city": "Lima"})  # the conversation goes on
        seen.append(("forecast", "ok"))
    if tasks:
        assert extension.polls == 5
    return seen, sizes


def build_server() -> Any:
    """``rounds_server.build()``: the same server, in this process (for ``meter.instrument``)."""
    spec = importlib.util.spec_from_file_location("rounds_server", SCRIPT_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build()


def definitions(listed: list[Any]) -> dict[str, int]:
    return {t.name: len(json.dumps(t.model_dump(mode="json", by_alias=True, exclude_none=True), separators=(",", ":")))
            for t in listed}


def stored(where: str) -> list[dict[str, Any]]:
    """Every event in a store (a SQLite path or a postgresql:// URL), attributes decoded."""
    store = open_store(where, upgrade=False)
    try:
        events = stored_events(store)
    finally:
        store.close()
    for event in events:
        event["attributes"] = json.loads(event["attributes"]) if event["attributes"] else {}
    return events


def calls(events: list[dict[str, Any]]) -> Counter:
    """(tool, outcome class) of every stored tool call."""
    return Counter((e["tool"], e["attributes"]["mcp.outcome"]) for e in events if e["kind"] == "tool_call")

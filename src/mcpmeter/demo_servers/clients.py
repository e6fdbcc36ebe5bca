"""The client side of the demo: the MCP SDK's own ``Client``, answering the servers' questions
the way a user would, polling tasks, and keeping a ledger of what it saw (so that what the
capture stored can be compared with it)."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import anyio
from mcp import Client
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, ElicitResult, Implementation, Request, Result
from pydantic import Field

from .servers import TASKS, TaskParams

CALLER_CODES = (-32700, -32600, -32601, -32602, -32002)  # what a client reads as its own mistake


class GetTask(Request[TaskParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    params: TaskParams


class TaskAnswer(Result):
    task: dict[str, Any]
    result: dict[str, Any] | None = None


class TaskCreated(Result):
    result_type: Literal["task"] = Field("task", alias="resultType")
    task: dict[str, Any]


class TasksClient(ClientExtension):
    """The client half of the tasks extension: poll ``tasks/get`` until the task is over."""

    identifier = TASKS

    def claims(self):
        return [ResultClaim(result_type="task", model=TaskCreated, resolve=self.resolve)]

    async def resolve(self, created: TaskCreated, ctx: ClaimContext) -> CallToolResult:
        task_id = created.task["taskId"]
        while True:
            answer = await ctx.session.send_request(GetTask(params=TaskParams(taskId=task_id)), TaskAnswer)
            status = answer.task["status"]
            if status == "completed":
                return CallToolResult.model_validate(answer.result)
            if status in ("failed", "cancelled"):
                return CallToolResult.model_validate({"content": [{"type": "text", "text": status}], "isError": True})
            await anyio.sleep(0)


async def answer(context: Any, params: Any) -> ElicitResult:
    """The user: confirms, except a rollout to everyone and deleting doc-13."""
    text = params.message
    return ElicitResult(action="accept", content={"confirm": "100%" not in text and "doc-13?" not in text})


class Call(NamedTuple):
    tool: str
    arguments: dict[str, Any]
    give_up_after: float | None = None  # the user presses stop after this many seconds


async def converse(target: Any, mode: str, client: tuple[str, str], calls: list[Call],
                   tasks: bool = False) -> list[tuple[str, str]]:
    """One conversation: list the tools, make the calls. Returns (tool, outcome class) as the
    client saw each call: ok, tool_error, caller_error, server_error or cancelled."""
    seen: list[tuple[str, str]] = []
    async with Client(target, mode=mode, client_info=Implementation(name=client[0], version=client[1]),
                      elicitation_callback=answer, cache=None, extensions=[TasksClient()] if tasks else []) as session:
        await session.list_tools()
        for call in calls:
            outcome = "cancelled"
            with anyio.move_on_after(call.give_up_after if call.give_up_after is not None else float("inf")):
                try:
                    result = await session.call_tool(call.tool, call.arguments)
                    outcome = "tool_error" if result.is_error else "ok"
                    text = getattr(result.content[0], "text", "") if result.content else ""
                    if result.is_error and "Unknown tool" in text:
                        outcome = "caller_error"
                except MCPError as exc:
                    outcome = "caller_error" if exc.error.code in CALLER_CODES else "server_error"
            seen.append((call.tool, outcome))
    return seen

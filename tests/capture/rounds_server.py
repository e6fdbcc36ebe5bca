"""A real mcp 2.x ``MCPServer`` whose tools need more than one request: the capture tests' server.

Tools:
- ``delete_file(path)``: asks the user to confirm (``Elicit``); on 2026-07-28 that is an
  ``InputRequiredResult`` and a retry, on 2025-11-25 an ``elicitation/create`` mid-call.
  Declining keeps the file: an isError result.
- ``transfer(amount)``: asks twice (two questions in sequence: three rounds on 2026-07-28).
- ``long_job(steps, outcome)``: runs as a task (the ``io.modelcontextprotocol/tasks``
  extension below) when the client opted in, reaching ``outcome`` (completed, failed) after
  ``steps`` polls of ``tasks/get`` (the demo servers' minimal extension, ``mcpmeter.demo_servers``).
- ``forecast(city)``: plain; ``Atlantis`` raises ToolError (an isError result).
- ``slow(seconds)``: for cancellation.
- ``explode()``: raises a JSON-RPC internal error (the server failing).
- 12 ``unused_N`` tools nobody calls (the catalog's "listed but never called").

Usage: python rounds_server.py stdio | http PORT
"""

from __future__ import annotations

import sys
from typing import Annotated

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resolve import Elicit, Resolve
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR
from pydantic import BaseModel

from mcpmeter.demo_servers.servers import Tasks


class Confirm(BaseModel):
    confirm: bool


async def ask_delete(path: str) -> Elicit[Confirm]:
    return Elicit(f"Delete {path}?", Confirm)


async def ask_amount(amount: int) -> Elicit[Confirm]:
    return Elicit(f"Transfer {amount}?", Confirm)


async def ask_again(first: Annotated[Confirm, Resolve(ask_amount)]) -> Elicit[Confirm]:
    return Elicit("Really?", Confirm)


def build() -> MCPServer:
    mcp = MCPServer("rounds-demo", version="0.3.0",
                    extensions=[Tasks(("long_job",), done="job done", failed="the job failed", structured=True)])

    @mcp.tool()
    def delete_file(path: str, answer: Annotated[Confirm, Resolve(ask_delete)]) -> str:
        """Deletes a file after the user confirms."""
        if not answer.confirm:
            raise ToolError("kept: the user said no")
        return f"deleted {path}"

    @mcp.tool()
    def transfer(amount: int, sure: Annotated[Confirm, Resolve(ask_again)]) -> str:
        """Moves money after two confirmations."""
        return "sent" if sure.confirm else "not sent"

    @mcp.tool()
    def long_job(steps: int = 2, outcome: str = "completed") -> str:
        """Runs as a task when the client supports tasks."""
        return "ran inline"

    @mcp.tool()
    def forecast(city: str) -> str:
        """Tomorrow's weather in a city."""
        if city == "Atlantis":
            raise ToolError("no such city")
        return f"sunny in {city}"

    @mcp.tool()
    async def slow(seconds: float) -> str:
        """Answers after a while."""
        await anyio.sleep(seconds)
        return "done"

    @mcp.tool()
    def explode() -> str:
        """Fails as the server."""
        raise MCPError(INTERNAL_ERROR, "the server broke")

    for n in range(12):
        def unused(text: str = "") -> str:
            return text

        mcp.add_tool(unused, name=f"unused_{n}", description=f"Never called ({n}). " + "padding " * n)
    return mcp


if __name__ == "__main__":
    server = build()
    if sys.argv[1] == "stdio":
        server.run("stdio")
    else:
        import uvicorn

        uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")

"""A real streamable-HTTP MCP server (mcp 2.x ``MCPServer``) under uvicorn, for the HTTP proxy tests.

Tools: ``forecast(city)`` (``Atlantis`` raises ToolError: an isError result), ``slow(seconds)``.
Plain HTTP routes for checking the proxy itself: ``GET /echo-headers`` answers with the
request headers it received; ``GET /stream`` sends one SSE event, then the second only
after ``POST /release``.

Usage: python http_server.py PORT [--json-response]
"""

from __future__ import annotations

import sys

import anyio
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

mcp = MCPServer("weather-http", version="1.2.3")
released = anyio.Event()


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


@mcp.custom_route("/echo-headers", methods=["GET"])
async def echo_headers(request: Request) -> Response:
    return JSONResponse([[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.headers.raw])


@mcp.custom_route("/stream", methods=["GET"])
async def stream(request: Request) -> Response:
    async def events():
        yield b"data: first\n\n"
        await released.wait()
        yield b"data: second\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@mcp.custom_route("/release", methods=["POST"])
async def release(request: Request) -> Response:
    released.set()
    return Response(status_code=204)


if __name__ == "__main__":
    port = int(sys.argv[1])
    app = mcp.streamable_http_app(json_response="--json-response" in sys.argv)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")

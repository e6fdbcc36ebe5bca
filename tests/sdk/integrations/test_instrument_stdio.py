"""One line in a real stdio MCP server process: what its client did is what gets reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import anyio
import pytest
from instrument_helpers import report_tools
from mcp import Client
from mcp.client.stdio import StdioServerParameters

MCPSERVER_SCRIPT = '''
from mcp.server.mcpserver import MCPServer
from mcpmeter import Meter

mcp = MCPServer("files", version="0.4.0")
Meter().instrument(mcp)


@mcp.tool()
def read_file(path: str) -> str:
    return f"contents of {path}"


@mcp.tool()
def delete_file(path: str) -> str:
    raise PermissionError(f"{path} is read-only")


if __name__ == "__main__":
    mcp.run()
'''

FASTMCP_SCRIPT = '''
from fastmcp import FastMCP
from mcpmeter import Meter

mcp = FastMCP("files", version="0.4.0")
Meter().instrument(mcp)


@mcp.tool
def read_file(path: str) -> str:
    return f"contents of {path}"


@mcp.tool
def delete_file(path: str) -> str:
    raise PermissionError(f"{path} is read-only")


if __name__ == "__main__":
    mcp.run(show_banner=False)
'''

EXPECTED = {"read_file": (3, 0), "delete_file": (1, 1), "rename_file": (1, 1)}


async def use(params: StdioServerParameters) -> None:
    async with Client(params, cache=None) as c:
        for path in ("a.txt", "b.txt", "c.txt"):
            assert (await c.call_tool("read_file", {"path": path})).is_error is False
        assert (await c.call_tool("delete_file", {"path": "a.txt"})).is_error is True
        assert (await c.call_tool("rename_file", {"path": "a.txt"})).is_error is True


def run_server_session(tmp_path, script: str, env: dict[str, str]) -> None:
    path = tmp_path / "files_server.py"
    path.write_text(script)
    full_env = {**os.environ, "MCPMETER_USER": "dana", **env}
    anyio.run(use, StdioServerParameters(command=sys.executable, args=[str(path)], env=full_env))


def url_report(url: str) -> dict[str, tuple[int, int]]:
    out = subprocess.run([sys.executable, "-m", "mcpmeter", "report", "--format", "json", "--period", "1d", "--url", url],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return {t["tool"]: (t["calls"], t["errors"]) for t in json.loads(out.stdout)["tools"]}


def poll(read, expected, seconds: float = 30):
    deadline = time.monotonic() + seconds
    while True:
        got = read()
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize("script", [MCPSERVER_SCRIPT, FASTMCP_SCRIPT], ids=["mcpserver", "fastmcp"])
def test_a_stdio_server_records_into_the_local_store(tmp_path, script):
    db = str(tmp_path / "local.db")
    run_server_session(tmp_path, script, {"MCPMETER_DB": db})
    # The server process delivers what it queued as it exits (atexit), after the client left.
    assert poll(lambda: report_tools(db) if os.path.exists(db) else {}, EXPECTED) == EXPECTED


@pytest.mark.slow
@pytest.mark.parametrize("script", [MCPSERVER_SCRIPT, FASTMCP_SCRIPT], ids=["mcpserver", "fastmcp"])
def test_a_stdio_server_ships_to_a_collector(tmp_path, collector, script):
    run_server_session(tmp_path, script, {"MCPMETER_URL": collector.url})
    assert poll(lambda: url_report(collector.url), EXPECTED) == EXPECTED

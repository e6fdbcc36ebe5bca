"""The tool owner seed's weblab MCP server, as its owner would instrument it (run as a stdio subprocess).

Its tools use the analytics migration seed's positional decorator form, and one line adds the
seed's `weblab_usage_report` tool. Configuration comes from the environment, as for any user:
MCPMETER_URL, MCPMETER_API_KEY (ingest), MCPMETER_READ_KEY, MCPMETER_USER, MCPMETER_HOME.
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

from mcpmeter import Meter

server = MCPServer("weblab")
meter = Meter(server="weblab", flush_interval=0.1)


@server.tool()
@meter.tool("weblab_details", "weblab")
def weblab_details(experiment: str) -> str:
    """Details of a weblab experiment."""
    return f"{experiment}: running, 2 treatments"


@server.tool()
@meter.tool("weblab_allocations", "weblab")
def weblab_allocations(experiment: str) -> str:
    """Allocations of a weblab experiment."""
    if experiment == "broken":
        raise ValueError("no such experiment")
    return f"{experiment}: T1 50%, C 50%"


meter.add_usage_report_tool(server, name="weblab_usage_report")

if __name__ == "__main__":
    server.run()

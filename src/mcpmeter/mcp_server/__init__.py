"""`mcpmeter mcp`: usage analytics as an MCP server, so an agent can answer
"how is our server doing this week?" from a local store or a collector.

``build_server(source)`` needs the ``mcp`` package (``pip install 'mcpmeter[mcp]'``);
importing this package does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .sources import CollectorSource, Source, StoreSource

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

__all__ = ["CollectorSource", "Source", "StoreSource", "build_server"]


def build_server(source: Source) -> MCPServer[Any]:
    from .server import build_server as build

    return build(source)

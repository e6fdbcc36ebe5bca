"""The MCP servers and clients ``mcpmeter demo`` drives through the real capture paths.

Real ``MCPServer``s (mcp 2.x), not fakes: ``servers.py`` builds them, ``clients.py`` is the
MCP SDK client side (answers to input requests, the tasks extension's polling), and
``python -m mcpmeter.demo_servers NAME stdio|http PORT`` runs one as its own process for
``mcpmeter proxy`` to sit in front of. Nothing here is imported by the SDK or the collector:
only ``mcpmeter.demo`` uses it, and it needs the ``mcp`` package.
"""

"""``mcpmeter proxy``: record any MCP server's traffic without touching the server.

``tracker`` matches JSON-RPC requests to responses and builds events (shared);
``stdio`` runs a server as a child process; ``http`` is a streamable-HTTP reverse proxy.
"""

"""mcpmeter: usage analytics for MCP servers.

    from mcpmeter import Meter
    meter = Meter(server="weblab")

    @meter.tool(category="rag")
    def search(query: str) -> str: ...
"""

from __future__ import annotations

__version__ = "0.1.0"

from .exceptions import AuthError, ConfigError, MCPMeterError, StorageError, ValidationError
from .sdk.meter import Meter

__all__ = [
    "AuthError",
    "ConfigError",
    "MCPMeterError",
    "Meter",
    "StorageError",
    "ValidationError",
    "__version__",
]

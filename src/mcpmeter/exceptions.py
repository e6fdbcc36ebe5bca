"""The exceptions mcpmeter raises.

    MCPMeterError
     ├── ConfigError        a setting or argument is wrong (the message says which, and how to fix it)
     ├── ValidationError    an event or request does not match the wire format
     ├── AuthError          missing, unknown, revoked or under-scoped API key
     └── StorageError       the store cannot be opened, migrated, read or written
          └── SchemaVersionError   the store's schema is newer/older than this version understands

Backend errors (sqlite3, psycopg, httpx) are translated into these at the boundary.
"""

from __future__ import annotations


class MCPMeterError(Exception):
    """Base class. ``hint`` is one line telling the user what to do about it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class ConfigError(MCPMeterError):
    pass


class ValidationError(MCPMeterError):
    pass


class AuthError(MCPMeterError):
    def __init__(self, message: str, status: int = 401, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.status = status


class StorageError(MCPMeterError):
    pass


class SchemaVersionError(StorageError):
    pass

"""The exceptions mcpmeter raises: every class a user can see, in one tree.

    MCPMeterError                 base; ``hint`` is one line saying what to do about it
     ├── ConfigError              a setting or argument is wrong (the message says which, and how to fix it)
     │    ├── MissingExtra        a command needs an optional extra that is not installed (pip install 'mcpmeter[...]')
     │    └── Unreachable         the collector at MCPMETER_URL / --url cannot be reached (or its proxy answers 502-504)
     ├── ValidationError          an event, request or admin argument is not valid (``field`` names it, when known)
     │    ├── BatchError          a request body as a whole is unusable (not JSON, not a list, too many events)
     │    │    ├── OtlpError      the body is not an OTLP trace export
     │    │    └── TooDeep        the JSON nests deeper than a decoder can follow (HTTP 400)
     │    ├── ModelErrors         the body does not fit the MCP gateway API's models (``detail``: FastAPI's 422 list)
     │    ├── BodyTooLarge        the request body is over the collector's limit (HTTP 413)
     │    └── Unstorable          the store refused a value of a request that passed validation (HTTP 422)
     ├── AuthError                missing, unknown, revoked or under-scoped API key (``status``: 401 or 403)
     │    ├── SignatureError      a signed submission is unsigned, stale, replayed or does not match
     │    └── SignInError         an OpenID Connect sign-in failed (the message is shown to the person)
     ├── NotFoundError            an admin action names a key, grant or project that is not there (HTTP 404)
     ├── ConflictError            an admin action would create something that already exists (HTTP 409)
     ├── RateLimited              a rate-limit bucket is empty; ``retry_after`` seconds (HTTP 429)
     ├── Overloaded               more rows wait for the collector's writer than it may hold (HTTP 503)
     └── StorageError             the store cannot be opened, migrated, read or written
          └── SchemaVersionError  the store's schema is newer/older than this version understands

Backend errors (sqlite3, psycopg, httpx, protobuf, PyJWT) are translated into these at the
boundary. ``BatchError`` and ``OtlpError`` are also ``ValueError``s, as they always were.
"""

from __future__ import annotations

from typing import Any


class MCPMeterError(Exception):
    """Base class. ``hint`` is one line telling the user what to do about it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class ConfigError(MCPMeterError):
    pass


class Unreachable(ConfigError):
    """The collector cannot be reached: ``mcpmeter report`` then answers from this machine's data."""


class MissingExtra(ConfigError):
    """One line naming the extra to install; there is no separate hint."""

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(f"{what} needs the {extra} extra: pip install 'mcpmeter[{extra}]'")
        self.extra = extra


class ValidationError(MCPMeterError):
    def __init__(self, message: str, hint: str | None = None, field: str | None = None) -> None:
        super().__init__(message, hint)
        self.field = field


class BatchError(ValidationError, ValueError):
    """The body as a whole is unusable (not JSON, not a list, too many events)."""


class TooDeep(BatchError):
    """The document nests deeper than a decoder can follow."""

    def __init__(self, what: str = "the JSON body") -> None:
        super().__init__(f"{what} is nested too deeply to be read",
                         hint="send JSON nested a few levels deep, as the format describes")


class ModelErrors(ValidationError):
    """The body does not fit the MCP gateway metrics-service's models: ``detail`` is FastAPI's error list."""

    def __init__(self, detail: list[dict[str, Any]]) -> None:
        super().__init__(str(detail[0]["msg"]) if detail else "invalid")
        self.detail = detail


class OtlpError(BatchError):
    """The body is not an OTLP trace export."""


class BodyTooLarge(ValidationError):
    def __init__(self, message: str = "the request body is too large", hint: str | None = None) -> None:
        super().__init__(message, hint)


class Unstorable(ValidationError):
    """The store refused the data of one request (a value it cannot hold): nothing of that
    request was stored, and retrying it cannot help. Raised by the stores at their boundary
    (PostgreSQL data exceptions and program limits, text SQLite cannot encode)."""


class AuthError(MCPMeterError):
    def __init__(self, message: str, status: int = 401, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.status = status


SIGN_HINT = ("sign `<timestamp>.<raw body>` with HMAC-SHA256 and the key's signing secret; send X-MCPMeter-Timestamp "
             "(unix seconds) and X-MCPMeter-Signature: v1=<hex> (the SDK does when MCPMETER_SIGNING_SECRET is set)")


class SignatureError(AuthError):
    def __init__(self, message: str, hint: str = SIGN_HINT) -> None:
        super().__init__(message, 401, hint)
        self.reason = "bad_signature"


class SignInError(AuthError):
    """The sign-in flow failed; the message is shown to the person."""


class NotFoundError(MCPMeterError):
    pass


class ConflictError(MCPMeterError):
    pass


class RateLimited(MCPMeterError):
    """429: a bucket is empty. ``retry_after`` is in whole seconds."""

    def __init__(self, message: str, retry_after: int, hint: str) -> None:
        super().__init__(message, hint)
        self.retry_after = retry_after


class Overloaded(MCPMeterError):
    """More rows are waiting for the writer than it may hold; the client should retry."""


class StorageError(MCPMeterError):
    pass


class SchemaVersionError(StorageError):
    pass

"""The storage interface every backend implements (SQLite and PostgreSQL).

Backends speak in plain tuples and small records; everything that is about meaning
(validation, hashing, analytics) lives outside them. All methods are synchronous and
thread-safe: the collector calls writes from one writer thread and reads from a pool.
Both backends give the same rows in the same order for every read (``tests/storage_pg``
checks it); their shared SQL is in ``core.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Protocol

from ..events import Row


class Project(NamedTuple):
    id: int
    name: str
    user_salt: str
    created_at: int


class KeyInfo(NamedTuple):
    id: int
    project_id: int
    project: str
    name: str
    prefix: str
    scopes: frozenset[str]
    created_at: int
    last_used_at: int | None
    revoked_at: int | None
    expires_at: int | None
    servers: frozenset[str] | None = None  # the only servers the key may submit for (None: any)

    def active(self, now_ms: int) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now_ms)


class IngestResult(NamedTuple):
    accepted: int
    duplicates: int


class Migration(NamedTuple):
    version: int
    name: str
    up: str
    down: str


class EventFilter(NamedTuple):
    """Which events a read covers: one project, a half-open time range [start_ms, end_ms)."""

    project_id: int
    start_ms: int
    end_ms: int
    server: str | None = None
    tool: str | None = None
    client: str | None = None
    category: str | None = None  # the tools whose latest recorded category this is (tool_catalog.category)


class Store(Protocol):
    url: str  # as given (a PostgreSQL URL without its password)

    @property
    def location(self) -> str:
        """Where the store is, for messages and pages: a file path, or the URL without its password."""
        ...

    def size_bytes(self) -> int | None:
        """Bytes on disk (SQLite: the file with its WAL); None where the backend does not tell."""
        ...

    # schema
    def schema_version(self) -> int: ...
    def upgrade(self, target: int | None = None) -> list[int]: ...
    def downgrade(self, target: int) -> list[int]: ...

    # projects and keys
    def ensure_project(self, name: str, audit: AuditEntry | None = None) -> Project:
        """The project, created if new; ``audit`` is written in the creating transaction (not
        when the project existed), with its project id and name filled in if left None."""
        ...
    def project_by_name(self, name: str) -> Project | None: ...
    def project_by_id(self, project_id: int) -> Project | None: ...
    def list_projects(self) -> list[Project]: ...
    def add_key(self, project_id: int, name: str, key_hash: str, prefix: str, scopes: Iterable[str], expires_at: int | None = None,
                replace: bool = False, audit: AuditEntry | None = None,
                servers: Iterable[str] | None = None) -> KeyInfo:
        """Store a new key; ``audit`` is written in the same transaction; ``servers``: the only
        servers it may submit for (None: any)."""
        ...
    def key_by_hash(self, key_hash: str) -> KeyInfo | None: ...
    def list_keys(self, project_id: int | None = None) -> list[KeyInfo]: ...
    def revoke_key(self, project_id: int | None, name_or_prefix: str, audit: AuditEntry | None = None) -> int:
        """Revoke the active keys of that name or prefix: how many; ``audit`` is written in the
        same transaction when at least one was."""
        ...
    def touch_keys(self, last_used: dict[int, int]) -> None: ...

    # events
    def ingest(self, groups: Sequence[tuple[int, Sequence[Row]]],
               stored_rows: dict[int, list[Row]] | None = None) -> list[IngestResult]:
        """Store each (project_id, rows) group in ONE transaction; rows follow ``events.ROW_FIELDS``.

        Returns one result per group. An event id already stored for that project is a
        duplicate and is not stored again. When this returns, the rows are durable.
        With ``stored_rows``, the rows really inserted (duplicates left out) are added to it
        per project once the transaction committed: what the collector's metrics count, so
        that several collectors on one store count every event exactly once between them.
        """
        ...

    # raw-event reads (exact, cost grows with events: for checks, exports and short windows)
    def count_events(self, f: EventFilter, kind: str | None = "tool_call") -> int: ...
    def call_counts(self, f: EventFilter) -> list[tuple[Any, ...]]:
        """(server, tool, calls, errors) of the raw tool calls in ``f``'s window (any bounds, in ms)."""
        ...
    def distinct_users(self, f: EventFilter) -> int: ...
    def recent_errors(self, f: EventFilter, limit: int = 20) -> list[tuple[Any, ...]]:
        """Newest failed events first; among equal times, the later stored first."""
        ...
    def export_events(self, project_id: int, after: int = 0, limit: int = 5000) -> list[tuple[Any, ...]]: ...

    # rollup reads (cost grows with buckets x dimensions; ``f`` must be aligned to ``grain``)
    def cells(self, f: EventFilter, grain: str, kinds: Sequence[str] | None = ("tool_call",),
              latency: bool = True) -> list[tuple[Any, ...]]:
        """(bucket, kind, server, tool, client, calls, errors, dur_count, dur_sum, dur_min, dur_max, hist,
        caller_errors, server_errors, cancelled), in no particular order (``kinds`` None: every kind);
        ``hist`` is the histogram as the backend stores it (a blob, or a ``{bin: count}`` map), which
        ``rollup.Cell.add_cell`` and ``histogram`` read; None without ``latency`` (counts only)."""
        ...
    def client_counts(self, f: EventFilter, grain: str) -> list[tuple[Any, ...]]:
        """(client, calls, errors, caller_errors, server_errors, cancelled) of the tool calls in the window."""
        ...
    def tool_cells(self, f: EventFilter, grain: str, latency: bool = True) -> list[tuple[Any, ...]]:
        """Tool-call cells like ``cells`` but with every client together (client ''), from a
        per-tool rollup where the backend has one; returning ``cells(f, grain)`` is correct too."""
        ...
    def users(self, f: EventFilter, grain: str, group: Sequence[str] = ()) -> list[tuple[Any, ...]]: ...
    def new_users(self, f: EventFilter, grain: str) -> int: ...
    def new_users_by_bucket(self, f: EventFilter, grain: str) -> dict[int, int]:
        """``new_users`` of each bucket of the window: {bucket start: count}, buckets without any left out."""
        ...
    def error_groups(self, f: EventFilter) -> list[tuple[Any, ...]]:
        """(server, tool, error_type, outcome, count, last_ts), most frequent first."""
        ...
    def category_users(self, f: EventFilter, grain: str) -> list[tuple[Any, ...]]:
        """(category or None, distinct calling users) in the window."""
        ...
    def action_counts(self, f: EventFilter, grain: str) -> list[tuple[Any, ...]]:
        """(bucket, kind, server, count) of the other usage actions in the window."""
        ...
    def action_users(self, f: EventFilter, grain: str) -> list[tuple[Any, ...]]:
        """(server, kind, distinct users) of the other usage actions in the window."""
        ...
    def activation(self, f: EventFilter) -> list[tuple[Any, ...]]:
        """(server, client, followed, sessions, handshake, listed, called, listed_not_called) of whom
        the activation funnel follows, first seen in the window."""
        ...
    def sessions(self, f: EventFilter, limit: int = 200_000) -> list[tuple[Any, ...]]:
        """Sessions that started in the window, by first_ts then session_id."""
        ...
    def session_counts(self, f: EventFilter) -> list[tuple[Any, ...]]:
        """(client, client_version, protocol_version, sessions) of the sessions that started in the window."""
        ...
    def catalog(self, project_id: int, server: str | None = None) -> list[tuple[Any, ...]]: ...
    def last_calls(self, project_id: int, server: str | None = None) -> list[tuple[Any, ...]]: ...
    def tool_catalog(self, project_id: int, server: str | None = None) -> list[tuple[Any, ...]]:
        """(server, tool, first_seen, last_seen, last_called, listed_first, listed_last, def_bytes, category)."""
        ...

    # measurements, server events, retention
    def ingest_measurements(self, project_id: int, rows: Sequence[tuple[Any, ...]]) -> IngestResult: ...
    def measurement_days(self, f: EventFilter, name: str | None = None) -> list[tuple[Any, ...]]: ...
    def measurement_buckets(self, f: EventFilter, names: Sequence[str] = (), grain: str = "day") -> list[tuple[Any, ...]]:
        """(bucket, server, name, type, tags, count, sum, min, max, last_value) per hour or day of the window."""
        ...
    def ingest_server_events(self, project_id: int, rows: Sequence[tuple[Any, ...]]) -> IngestResult: ...
    def server_events(self, f: EventFilter, limit: int = 1000) -> list[tuple[Any, ...]]:
        """Oldest first, by ts then event_id."""
        ...
    def prune(self, raw_before_ms: int, rollups_before_ms: int, chunk: int = 20_000) -> dict[str, int]: ...

    def close(self) -> None: ...


class AuditEntry(NamedTuple):
    """One administrative action: who did what, when, to which project."""

    ts: int
    project_id: int | None
    project: str | None
    actor: str  # "key:mcpm_AbC123", "os:alice", "oidc:sub (email)", "loopback"
    action: str  # "key.create", "key.revoke", "key.rotate", "project.create", "access.grant", "user.delete", …
    target: str | None = None
    detail: str | None = None  # JSON
    source: str = "cli"  # "cli" or "http"


class SessionRow(NamedTuple):
    """A dashboard session: whose project it sees, who holds it (a key's hash, or ``oidc:<subject>``),
    and for a person signed in with OpenID Connect, who they are (JSON)."""

    project_id: int
    owner: str
    person: str | None
    expires_at: int


class SecurityStore(Protocol):
    """What the collector's security features need from a store (both backends implement it)."""

    def keys_version(self) -> int:
        """A number that grows whenever a key or an access grant is revoked, expired, replaced or changed."""
        ...
    def signing_secret(self, key_id: int) -> str | None: ...
    def set_signing_secret(self, key_id: int, secret: str | None) -> None: ...
    def rotate_key(self, project_id: int, name: str, key_hash: str, prefix: str, overlap_ms: int,
                   signing_secret: str | None = None, audit: AuditEntry | None = None) -> tuple[KeyInfo, KeyInfo] | None:
        """(old, new) keys; None when there is no active key of that name."""
        ...
    def add_audit(self, entry: AuditEntry) -> None: ...
    def audit_entries(self, project_id: int | None = None, since_ms: int = 0, limit: int = 1000) -> list[AuditEntry]: ...
    def grant_access(self, project_id: int, identity: str, role: str, audit: AuditEntry | None = None) -> None: ...
    def revoke_access(self, project_id: int, identity: str, audit: AuditEntry | None = None) -> int: ...
    def access_for(self, identities: Sequence[str]) -> list[tuple[int, str, str, str]]:
        """Grants of any of these identities: (project_id, project name, identity, role)."""
        ...
    def list_access(self, project_id: int | None = None) -> list[tuple[str, str, str, int]]: ...
    def known_names(self, project_id: int) -> tuple[set[str], set[tuple[str, str]]]:
        """Servers and (server, tool) pairs the project's rollups and catalog know."""
        ...
    def delete_user(self, project_id: int, user_hash: str, audit: AuditEntry | None = None) -> dict[str, int]:
        """Remove one user's raw events and identifying rows, and take their calls out of the
        rollups where raw events still cover the whole day; see docs/security.md."""
        ...
    def add_session(self, token_hash: str, project_id: int, owner: str, person: str | None, expires_at: int,
                    per_owner: int, per_project: int) -> int:
        """Store a dashboard session, ending the owner's and then the project's oldest beyond the caps."""
        ...
    def session(self, token_hash: str) -> SessionRow | None: ...
    def update_session(self, token_hash: str, project_id: int, person: str | None) -> bool: ...
    def drop_session(self, token_hash: str) -> int: ...
    def count_sessions(self, project_id: int | None = None) -> int: ...
    def take_once(self, token_hash: str, expires_at: int) -> bool:
        """True the first time a token is taken (until it expires): a replay gets False."""
        ...
    shared_counters: bool
    """Whether several collector processes share this store (PostgreSQL): counters that must be
    the same for all of them (a project's rate limit) are kept in it, not in memory."""

    def count_request(self, name: str, window_start: int, window_ms: int) -> int:
        """Count one request of ``name`` in the fixed window starting at ``window_start`` (ms):
        the window's count so far, this one included (atomic across collectors)."""
        ...
    def collector_secret(self, name: str) -> str:
        """A random secret shared by the collectors on this store, made on first use."""
        ...


class AdminStore(Store, SecurityStore, Protocol):
    """A store with its security side: what ``open_store`` returns (both backends are one)."""

"""Where the MCP server's answers come from: a local store or a collector's usage API.

Both sources answer the questions of the registry (``analytics/questions.py``) with the same
JSON, taking the same parameters (the collector's ``/v1/usage/*`` endpoints call the very
functions the store source calls), so the tools never need to know which one they talk to.
"""

from __future__ import annotations

import hashlib
import threading
import time
from contextvars import ContextVar
from typing import Any, Protocol

from .. import keys
from ..analytics import questions
from ..analytics.questions import Params
from ..exceptions import AuthError, MCPMeterError
from ..storage.base import Store

# The key the HTTP client of the MCP server presented (``mcp_server/http.py`` sets it for each
# request; the MCP SDK carries it to the tool's thread). A collector source reads with it.
CALLER_KEY: ContextVar[str | None] = ContextVar("mcpmeter_caller_key", default=None)
KEY_HINT = "send a read key of the project as `Authorization: Bearer <key>` (mcpmeter keys create --scopes read)"


class Source(Protocol):
    """One place usage answers come from."""

    label: str  # for logs and answers: "store /path/mcpmeter.db (project default)", "collector http://…"

    def ask(self, question: str, params: Params) -> dict[str, Any]:
        """The answer to one question of the registry (``params`` by the registry's names: period, grain, server, …), with ``project`` and the window it covers.

        Raises ``MCPMeterError`` (with a hint) for a bad period, a missing project, an
        unreachable collector or a refused key.
        """
        ...

    def catalog(self) -> set[tuple[str, str]]:
        """Every (server, tool) ever seen: listed or called, in any period."""
        ...

    def check_key(self, key: str) -> None:
        """Raise ``AuthError`` (401, or 403 for a key without the read scope or of another project)
        unless ``key`` may read what this source answers."""
        ...

    def unauthenticated(self) -> str | None:
        """Why no client could present a key this source accepts (None: some could)."""
        ...

    def close(self) -> None: ...


class StoreSource:
    """Answers computed in this process from a store (rollups; reads never block writers)."""

    def __init__(self, store: Store, project: str = "default") -> None:
        self.store = store
        self.project = project
        self.label = f"store {store.url} (project {project})"

    def _project_id(self) -> int:
        # Looked up on every call: a store that was empty when the server started fills up later.
        if self.store.schema_version() == 0:
            raise MCPMeterError(f"the store {self.store.url} holds no mcpmeter data yet",
                                hint="record something first (SDK, `mcpmeter proxy`), or run `mcpmeter demo`")
        project = self.store.project_by_name(self.project)
        if project is None:
            known = ", ".join(p.name for p in self.store.list_projects()) or "none"
            raise MCPMeterError(f"no project {self.project!r} in {self.store.url} (projects: {known})",
                                hint="start the MCP server with --project NAME")
        return project.id

    def ask(self, question: str, params: Params) -> dict[str, Any]:
        asked = questions.question(question)
        given = {k: v for k, v in params.items() if v is not None}
        q, options = questions.parse(asked, given, self._project_id)  # a wrong period is reported before the store is read
        return {"project": self.project, **questions.ask(self.store, asked, q, options)}

    def catalog(self) -> set[tuple[str, str]]:
        return {(server, tool) for server, tool, _, _ in self.store.catalog(self._project_id())}

    def check_key(self, key: str) -> None:
        """A key of this project with the read scope, neither revoked nor expired (read afresh: revocation is immediate)."""
        info = self.store.key_by_hash(keys.hash_key(key)) if self.store.schema_version() else None
        if info is None:
            raise AuthError("unknown API key", hint=KEY_HINT)
        if not info.active(int(time.time() * 1000)):
            raise AuthError(f"API key {info.prefix}… has been revoked or has expired", hint=KEY_HINT)
        if info.project != self.project:
            raise AuthError(f"API key {info.prefix}… is not a key of project {self.project!r}", 403, KEY_HINT)
        if not keys.allows(info.scopes, "read"):
            raise AuthError(f"API key {info.prefix}… lacks the `read` scope", 403, KEY_HINT)

    def unauthenticated(self) -> str | None:
        now = int(time.time() * 1000)
        if self.store.schema_version() and any(k.project == self.project and k.active(now) and keys.allows(k.scopes, "read")
                                               for k in self.store.list_keys()):
            return None
        return f"the store has no read key of project {self.project!r} for clients to send"

    def close(self) -> None:
        self.store.close()


class CollectorSource:
    """Answers fetched from a collector's ``GET /v1/usage/*`` with a read key."""

    CHECKED_SECONDS = 10.0  # a key the collector accepted is not asked about again for this long

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 15.0) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.label = f"collector {self.url}"
        self._checked: dict[str, float] = {}  # sha256 of a key -> when the collector last accepted it
        self._lock = threading.Lock()

    def _get(self, path: str, params: dict[str, Any], key: str | None = None) -> dict[str, Any]:
        from ..client import get_json

        return get_json(self.url, path, params, key or CALLER_KEY.get() or self.api_key, timeout=self.timeout)

    def ask(self, question: str, params: Params) -> dict[str, Any]:
        asked = questions.question(question)
        given = {k: v for k, v in params.items() if v is not None}
        questions.check_names(asked, given)
        questions.window_of(given)  # the same message for a bad period as the store gives, without a round trip
        return self._get(asked.path, given)

    def catalog(self) -> set[tuple[str, str]]:
        # `tools` lists what was called in the window plus the catalog's never-called rest:
        # together, everything ever seen. The shortest window keeps it cheap.
        answer = self._get("/v1/usage/tools", {"period": "1h"})
        return {(row["server"], row["tool"]) for row in [*answer["tools"], *answer["never_called"]]}

    def check_key(self, key: str) -> None:
        """The collector decides: one cheap read with the key (the collector checks every later read too)."""
        digest = hashlib.sha256(key.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            if now - self._checked.get(digest, -self.CHECKED_SECONDS) < self.CHECKED_SECONDS:
                return
        self._get("/v1/usage/summary", {"period": "1h"}, key)
        with self._lock:
            if len(self._checked) > 1000:
                self._checked.clear()
            self._checked[digest] = now

    def unauthenticated(self) -> str | None:
        return None  # clients present the collector's keys, and the collector checks them

    def close(self) -> None:
        pass

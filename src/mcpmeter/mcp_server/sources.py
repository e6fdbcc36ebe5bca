"""Where the MCP server's answers come from: a local store or a collector's usage API.

Both sources answer the same questions with the same JSON (the collector's
``/v1/usage/*`` endpoints call the very functions the store source calls), so the tools
never need to know which one they talk to.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Protocol

from ..analytics import queries
from ..analytics.periods import window
from ..analytics.queries import Query
from ..analytics.report import build_report
from ..exceptions import MCPMeterError
from ..storage.base import Store

Question = Literal["summary", "tools", "timeseries", "errors", "clients", "sessions", "report"]

_ANSWERS: dict[str, Callable[..., dict[str, Any]]] = {
    "summary": queries.summary,
    "tools": queries.tools,
    "timeseries": queries.timeseries,
    "errors": queries.errors,
    "clients": queries.clients,
    "sessions": queries.sessions,
    "report": build_report,
}


class Source(Protocol):
    """One place usage answers come from."""

    label: str  # for logs and answers: "store /path/mcpmeter.db (project default)", "collector http://…"

    def ask(self, question: Question, period: str, *, server: str | None = None, tool: str | None = None,
            client: str | None = None, grain: str | None = None) -> dict[str, Any]:
        """The answer to one question, with ``project`` and the window it covers.

        Raises ``MCPMeterError`` (with a hint) for a bad period, a missing project, an
        unreachable collector or a refused key.
        """
        ...

    def catalog(self) -> set[tuple[str, str]]:
        """Every (server, tool) ever seen: listed or called, in any period."""
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

    def ask(self, question: Question, period: str, *, server: str | None = None, tool: str | None = None,
            client: str | None = None, grain: str | None = None) -> dict[str, Any]:
        win = window(period, grain=grain)
        q = Query(self._project_id(), win, server, tool, client)
        return {"project": self.project, **_ANSWERS[question](self.store, q)}

    def catalog(self) -> set[tuple[str, str]]:
        return {(server, tool) for server, tool, _, _ in self.store.catalog(self._project_id())}

    def close(self) -> None:
        self.store.close()


class CollectorSource:
    """Answers fetched from a collector's ``GET /v1/usage/*`` with a read key."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 15.0) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.label = f"collector {self.url}"

    def _get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        from ..client import get_json

        return get_json(self.url, path, params, self.api_key, timeout=self.timeout)

    def ask(self, question: Question, period: str, *, server: str | None = None, tool: str | None = None,
            client: str | None = None, grain: str | None = None) -> dict[str, Any]:
        window(period, grain=grain)  # the same message for a bad period as the store gives, without a round trip
        return self._get(f"/v1/usage/{question}",
                         {"period": period, "server": server, "tool": tool, "client": client, "grain": grain})

    def catalog(self) -> set[tuple[str, str]]:
        # `tools` lists what was called in the window plus the catalog's never-called rest:
        # together, everything ever seen. The shortest window keeps it cheap.
        answer = self._get("/v1/usage/tools", {"period": "1h"})
        return {(row["server"], row["tool"]) for row in [*answer["tools"], *answer["never_called"]]}

    def close(self) -> None:
        pass

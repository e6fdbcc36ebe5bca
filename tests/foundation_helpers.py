"""Small builders shared by the foundation tests (events, counting what a store holds)."""

from __future__ import annotations

import itertools
import time
from typing import Any

from mcpmeter.storage.base import EventFilter

_ids = itertools.count()
EVERYTHING = (0, 1 << 62)


def now_ms() -> int:
    return int(time.time() * 1000)


def event(**fields: Any) -> dict[str, Any]:
    """A valid ``tool_call`` event (wire format v1); keyword arguments override fields."""
    base = {
        "id": f"evt-{next(_ids)}-{time.monotonic_ns()}",
        "kind": "tool_call",
        "ts": now_ms(),
        "server": "weblab",
        "tool": "search",
        "duration_ms": 12.5,
        "ok": True,
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def stored_count(store) -> int:
    """Every event row in the store, of any kind, in any project."""
    return sum(
        store.count_events(EventFilter(p.id, *EVERYTHING), kind=None) for p in store.list_projects()
    )


def stored_events(store, project_name: str = "default") -> list[dict[str, Any]]:
    """The events stored for one project, as dicts keyed by storage column."""
    from mcpmeter.events import ROW_FIELDS

    project = store.project_by_name(project_name)
    if project is None:
        return []
    return [dict(zip(ROW_FIELDS, row[1:])) for row in store.export_events(project.id, 0, 1_000_000)]


def everything(store, project_name: str = "default", **filters: Any) -> EventFilter:
    project = store.project_by_name(project_name)
    assert project is not None, f"no project {project_name!r}"
    return EventFilter(project.id, *EVERYTHING, **filters)

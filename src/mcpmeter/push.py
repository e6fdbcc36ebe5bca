"""`mcpmeter push`: upload a local store's history to a collector, idempotently.

Stored event ids are sent as they are, so pushing twice (or pushing events the collector
already has) counts nothing twice. Local users are already keyed hashes; the collector
hashes them again with its own key, so distinct-user counts stay right.
"""

from __future__ import annotations

import json

import msgspec

from .events import ROW_FIELDS
from .exceptions import MCPMeterError
from .sdk.transport import HttpTransport
from .storage import open_store

_WIRE = {"event_id": "id", "user_hash": "user"}
BATCH = 2000


def wire_event(row: tuple) -> dict:
    """A stored row (``ROW_FIELDS``) as the wire event it was: what ``push`` sends (the demo re-times it)."""
    event = {}
    for field, value in zip(ROW_FIELDS, row):
        if value is None:
            continue
        if field == "ok":
            value = bool(value)
        elif field == "attributes":
            value = json.loads(value)
        event[_WIRE.get(field, field)] = value
    return event


def push_store(db: str | None, project_name: str, url: str, api_key: str | None,
               signing_secret: str | None = None) -> tuple[int, int]:
    from rich.progress import Progress

    from . import credentials

    store = open_store(db, upgrade=False)
    project = store.project_by_name(project_name)
    if project is None:
        raise MCPMeterError(f"no project {project_name!r} in {store.url}", hint="nothing recorded locally yet")
    from . import settings

    transport = HttpTransport(url, api_key or credentials.key_for(url, "ingest"),
                              signing_secret=settings.get("MCPMETER_SIGNING_SECRET", signing_secret))
    encoder = msgspec.json.Encoder()
    accepted = duplicates = 0
    cursor = 0
    total = store.count_events(_all(project.id), kind=None)
    try:
        with Progress(transient=True) as progress:
            task = progress.add_task(f"Pushing to {url}", total=total)
            while True:
                rows = store.export_events(project.id, cursor, BATCH)
                if not rows:
                    break
                outcome = transport.send(encoder.encode([wire_event(r[1:]) for r in rows]), attempts=6)
                if not outcome.delivered:
                    raise MCPMeterError(f"the collector did not take the batch: {outcome.detail}",
                                        hint="fix the problem and run push again; nothing is counted twice")
                if outcome.rejected:
                    raise MCPMeterError(f"the collector rejected {outcome.rejected} events", hint="are they older than the collector's retention?")
                accepted += outcome.accepted
                duplicates += outcome.duplicates
                cursor = rows[-1][0]
                progress.update(task, advance=len(rows))
    finally:
        transport.close()
        store.close()
    return accepted, duplicates


def _all(project_id: int):
    from .storage.base import EventFilter

    return EventFilter(project_id, 0, 1 << 62)

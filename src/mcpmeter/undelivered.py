"""Local answers while the collector is away: this machine's figures, from its spool and local store.

A user whose calls are spooled (the collector at ``MCPMETER_URL`` cannot be reached) still
gets answers - the tool owner seed's "local fallback always works". The events waiting in the
spool for that collector and the events of the local store are loaded into a scratch store
(in a temporary directory; nothing of the spool or the store is taken or changed) and the
usage question is asked there. The answer says, in ``source``, that it is this machine's data
only and how much of it is undelivered; ``project`` says so too, for every output format.

Users are hashed with the local store's project key when there is one, so a user counted both
in the store and in the spool is one user. Standard library plus the base install only.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from .analytics import questions
from .events import Limits, Row, decode_batch
from .ingest import rows_for
from .paths import spool_path
from .sdk.spool import spooled_batches
from .storage import open_store, resolve_db
from .storage.base import Project

LABEL = "this machine (undelivered)"
_EXPORT_CHUNK = 5000


def _local_rows(db: str | None, project_name: str) -> tuple[list[Row], Project | None]:
    """The local store's events of ``project_name`` (none when there is no local SQLite store)."""
    target = resolve_db(db)
    if target.startswith(("postgresql://", "postgres://")) or not Path(target.removeprefix("sqlite:///")).exists():
        return [], None
    store = open_store(target, upgrade=False)
    try:
        if store.schema_version() == 0 or (project := store.project_by_name(project_name)) is None:
            return [], None
        rows: list[Row] = []
        after = 0
        while chunk := store.export_events(project.id, after, _EXPORT_CHUNK):
            rows += [Row(*r[1:]) for r in chunk]
            after = chunk[-1][0]
        return rows, project
    finally:
        store.close()


def answer(question: str, url: str, params: dict[str, str | None], *, db: str | None = None,
           spool: str | Path | None = None, project: str = "default", reason: str = "") -> dict[str, Any]:
    """``question`` (a registry name, e.g. ``report``) answered from this machine's data for collector ``url``."""
    q = questions.question(question)
    query_params = {k: v for k, v in params.items() if v is not None}
    win = questions.window_of(query_params)  # a wrong period is reported before anything is read
    local, local_project = _local_rows(db, project)
    spooled = []
    for body in spooled_batches(Path(spool) if spool else spool_path(), url):
        events, _ = decode_batch(body, Limits(max_events=1 << 30, max_age_ms=1 << 62, max_skew_ms=1 << 62))
        spooled += events
    with tempfile.TemporaryDirectory(prefix="mcpmeter-local-") as scratch_dir:
        scratch = open_store(str(Path(scratch_dir) / "answers.db"), durable=False)
        try:
            target = scratch.ensure_project(LABEL)
            hashing = local_project or target  # the local store's user key: one user is one user in both
            if local:
                scratch.ingest([(target.id, local)])
            if spooled:
                scratch.ingest([(target.id, rows_for(hashing, spooled))])
            data = questions.ask(scratch, q, questions.query_for(target.id, win, query_params))
        finally:
            scratch.close()
    return {"project": LABEL, **data, "source": {
        "kind": "local", "collector": url, "reason": reason, "spooled_events": len(spooled), "local_store_events": len(local),
        "note": "this machine's data only - calls waiting in its spool for the collector, and its local store; "
                "not the team's figures, which the collector answers once it is back",
    }}

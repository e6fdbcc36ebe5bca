"""The collector as an app factory, for several worker processes on one port.

``mcpmeter serve --workers N`` prepares the store once (migrations, keys, demo data), then
has uvicorn start N processes that each call ``create()``: each opens the store named by
``MCPMETER_DB`` and runs its own app, writer and connection pool. Every piece of state
they share lives in the store, so the workers are interchangeable (and so are collectors
on other hosts with the same PostgreSQL URL).

Also usable directly: ``MCPMETER_DB=postgresql://… uvicorn --factory
mcpmeter.server.collector.factory:create --workers 4``.

With SQLite the workers take turns at the file's single write lock (WAL, 30 s busy
timeout), so this adds request-handling processes but not write throughput.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

from ...storage import open_store, resolve_db
from .. import connections
from .app import CollectorConfig, create_app


def create() -> Any:
    """One worker's app, on the store of ``MCPMETER_DB`` (settings from the environment)."""
    store = open_store()
    atexit.register(store.close)
    return create_app(store, CollectorConfig())


def run_workers(db: str | None, host: str, port: int, workers: int, log_level: str) -> None:
    """Serve ``workers`` processes of the collector on host:port until stopped."""
    import uvicorn

    os.environ["MCPMETER_DB"] = resolve_db(db)  # the workers are new interpreters: they read it from the environment
    uvicorn.run("mcpmeter.server.collector.factory:create", factory=True, workers=workers, host=host, port=port,
                log_level=log_level if log_level != "info" else "warning", access_log=False, lifespan="on",
                **connections.options())  # each worker applies the connection rules to its own connections

"""Stores: pick a backend from a URL or path."""

from __future__ import annotations

from pathlib import Path

from .. import settings
from ..exceptions import ConfigError
from ..paths import default_db_path
from .base import EventFilter, IngestResult, KeyInfo, Project, Store

__all__ = ["open_store", "resolve_db", "Store", "EventFilter", "IngestResult", "KeyInfo", "Project"]


def resolve_db(db: str | None = None) -> str:
    """``--db`` / ``MCPMETER_DB`` / the default file, as a string URL or path."""
    value = settings.get("MCPMETER_DB", db)
    return str(value) if value else str(default_db_path())


def open_store(db: str | None = None, *, durable: bool = True, upgrade: bool = True) -> Store:
    """Open (and by default migrate) the store named by ``db``.

    ``durable=False`` trades the last few transactions on power loss for speed (SQLite
    ``synchronous=NORMAL``); a process crash loses nothing either way.
    """
    target = resolve_db(db)
    if target.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            "PostgreSQL stores are not available in this version",
            hint="use a SQLite path, e.g. --db ./mcpmeter.db",
        )
    if target.startswith("sqlite:///"):
        target = target[len("sqlite:///"):]
    elif "://" in target:
        raise ConfigError(f"unknown store URL {target!r}", hint="give a SQLite file path")
    from .sqlite import SQLiteStore

    store = SQLiteStore(Path(target), durable=durable)
    if upgrade:
        store.upgrade()
    return store

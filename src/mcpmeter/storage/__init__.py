"""Stores: pick a backend from a URL or path."""

from __future__ import annotations

from pathlib import Path

from .. import settings
from ..exceptions import ConfigError
from ..paths import default_db_path
from .base import AdminStore, EventFilter, IngestResult, KeyInfo, Project, Store

__all__ = ["AdminStore", "EventFilter", "IngestResult", "KeyInfo", "Project", "Store", "open_store", "resolve_db"]


def resolve_db(db: str | None = None) -> str:
    """``--db`` / ``MCPMETER_DB`` / the default file, as a string URL or path."""
    value = settings.get("MCPMETER_DB", db)
    return str(value) if value else str(default_db_path())


def open_store(db: str | None = None, *, durable: bool = True, upgrade: bool = True) -> AdminStore:
    """Open (and by default migrate) the store named by ``db``.

    ``durable=False`` trades the last few transactions on power loss for speed (SQLite
    ``synchronous=NORMAL``); a process crash loses nothing either way.
    """
    target = resolve_db(db)
    store: AdminStore
    if target.startswith(("postgresql://", "postgres://")):
        try:
            from .postgres import PostgresStore
        except ImportError:
            raise ConfigError(
                "PostgreSQL stores need psycopg, which is not installed",
                hint="pip install 'mcpmeter[postgres]'",
            ) from None
        store = PostgresStore(target, durable=durable)
    else:
        if target.startswith("sqlite:///"):
            target = target[len("sqlite:///"):]
        elif "://" in target:
            raise ConfigError(f"unknown store URL {target!r}", hint="give a SQLite file path or a postgresql:// URL")
        from .sqlite import SQLiteStore

        store = SQLiteStore(Path(target), durable=durable)
    if upgrade:
        try:
            store.upgrade()
        except BaseException:
            store.close()
            raise
    return store

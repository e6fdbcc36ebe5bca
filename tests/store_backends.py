"""Where test stores live: a SQLite file, or a fresh database in the local PostgreSQL.

PostgreSQL is a required service of the test suite (``.ci/run`` starts it): a test that
needs it and cannot reach it fails, it is never skipped. ``MCPMETER_TEST_PG`` names the
server and an existing database to connect to for CREATE/DROP DATABASE (default: the
local server's ``test`` database as ``postgres``).
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

BACKENDS = ("sqlite", "postgres")
PG_ADMIN_URL = os.environ.get("MCPMETER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def database_url(name: str, admin_url: str = PG_ADMIN_URL) -> str:
    return urlunsplit(urlsplit(admin_url)._replace(path="/" + name))


def _admin():
    import psycopg

    return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)


class _Databases:
    """Creates test databases, and drops them on a background thread: a DROP DATABASE takes
    about a second (it waits for every backend to release the files), which tests need not
    wait for. ``finish()`` (at the end of the session) waits for every drop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._template: str | None = None
        self._drops: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._dropper: threading.Thread | None = None

    def create(self, prefix: str, migrated: bool) -> str:
        name = f"{prefix}_{secrets.token_hex(6)}"
        template = self._migrated_template() if migrated else "template0"
        with _admin() as admin:
            admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return name

    def _migrated_template(self) -> str:
        """One database per session migrated to the newest schema, copied for each test:
        copying is several times faster than migrating."""
        with self._lock:
            if self._template is None:
                from mcpmeter.storage import open_store

                name = self.create("mcpmeter_template", migrated=False)
                open_store(database_url(name)).close()
                self._template = name
            return self._template

    def drop(self, name: str) -> None:
        with self._lock:
            if self._dropper is None:
                self._dropper = threading.Thread(target=self._drop_forever, name="drop-test-databases", daemon=True)
                self._dropper.start()
        self._drops.put(name)

    def _drop_forever(self) -> None:
        while (name := self._drops.get()) is not None:
            with _admin() as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def finish(self) -> None:
        with self._lock:
            template, self._template = self._template, None
            dropper, self._dropper = self._dropper, None
        if dropper is not None:
            self._drops.put(None)
            dropper.join()
        if template is not None:
            with _admin() as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')


databases = _Databases()


@contextlib.contextmanager
def pg_database(prefix: str = "mcpmeter_test", migrated: bool = False) -> Iterator[str]:
    """A new database for the duration, empty (from template0) or already migrated to the
    newest schema; dropped afterwards, even if collectors killed mid-test still hold
    connections to it."""
    name = databases.create(prefix, migrated)
    try:
        yield database_url(name)
    finally:
        databases.drop(name)


@contextlib.contextmanager
def store_location(backend: str, directory: Path, migrated: bool = False) -> Iterator[str]:
    """What to pass to ``open_store`` / ``--db`` for a store of ``backend``: a new SQLite file
    in ``directory``, or a new PostgreSQL database (``migrated``: already at the newest schema)."""
    if backend == "sqlite":
        yield str(directory / "store.db")
    elif backend == "postgres":
        with pg_database(migrated=migrated) as url:
            yield url
    else:
        raise ValueError(f"unknown backend {backend!r}")


@contextlib.contextmanager
def both_stores(directory: Path) -> Iterator[tuple]:
    """A new SQLite store and a new (migrated) PostgreSQL store, open side by side: the pair
    the store contract suite loads with the same data and asks the same questions."""
    from mcpmeter.storage import open_store

    with pg_database(migrated=True) as url:
        stores = (open_store(str(directory / "contract.db"), durable=False), open_store(url, durable=False))
        try:
            yield stores
        finally:
            for s in stores:
                s.close()

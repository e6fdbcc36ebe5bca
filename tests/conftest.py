"""Shared fixtures: an isolated MCPMETER_HOME per test, real stores, real collectors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest

from mcpmeter import keys as keylib
from mcpmeter.sdk import internal
from mcpmeter.storage import open_store
from store_backends import BACKENDS, databases, pg_database, store_location

ROOT = Path(__file__).resolve().parent.parent
MCPMETER = [sys.executable, "-m", "mcpmeter"]


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own MCPMETER_HOME and no inherited MCPMETER_* settings."""
    for name in list(os.environ):
        if name.startswith("MCPMETER_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    monkeypatch.setenv("MCPMETER_HOME", str(home))
    yield home


@pytest.fixture(autouse=True)
def sdk_errors_fail_loudly() -> Iterator[None]:
    """The SDK swallows its own errors in production; in tests they fail the test."""
    internal.collect = True
    internal.errors.clear()
    yield
    errors = list(internal.errors)
    internal.errors.clear()
    internal.collect = False
    assert not errors, f"the SDK reported internal errors: {errors!r}"


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    """The URL of a fresh PostgreSQL database, dropped after the test (fails if PostgreSQL is down)."""
    with pg_database() as url:
        yield url


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where a store of each backend lives, for tests that open, reopen or migrate it themselves."""
    with store_location(request.param, tmp_path) as location:
        yield location


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path):
    """A migrated store of each backend; ``@pytest.mark.parametrize("store", ["sqlite"], indirect=True)``
    limits a test that reaches into one backend's internals to that backend."""
    if request.param == "sqlite":
        s = open_store(str(tmp_path / "store.db"))
        yield s
        s.close()
    else:
        with pg_database(migrated=True) as url:
            s = open_store(url)
            yield s
            s.close()


def pytest_sessionfinish(session: pytest.Session) -> None:
    databases.finish()  # the test databases still being dropped in the background


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Keys(NamedTuple):
    ingest: str
    read: str
    admin: str


def make_keys(store, project: str = "default") -> Keys:
    p = store.ensure_project(project)
    made = {}
    for scope in keylib.SCOPES:
        key = keylib.new_key()
        store.add_key(p.id, f"{project}-{scope}", keylib.hash_key(key), keylib.display_prefix(key), [scope])
        made[scope] = key
    return Keys(**made)


class Collector(NamedTuple):
    url: str
    db: Path | str
    process: subprocess.Popen
    log: Path


def start_collector(db: Path | str, env: dict[str, str] | None = None, port: int | None = None, log: Path | None = None,
                    args: tuple[str, ...] = ()) -> Collector:
    """A real `mcpmeter serve` process on 127.0.0.1; returns once /ready answers.

    ``db`` is a SQLite path or a postgresql:// URL (then give ``log``); ``args`` are more `serve` options."""
    port = port or free_port()
    log = log or Path(db).with_suffix(f".{port}.log")
    full_env = {**os.environ, **(env or {})}
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            [*MCPMETER, "serve", "--port", str(port), "--db", str(db), "--log-level", "warning", *args],
            stdout=fh, stderr=subprocess.STDOUT, env=full_env,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"collector exited with {proc.returncode}: {log.read_text()}")
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                return Collector(url, db, proc, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"collector did not become ready: {log.read_text()}")


def stop_collector(c: Collector) -> None:
    if c.process.poll() is None:
        c.process.terminate()
        try:
            c.process.wait(10)
        except subprocess.TimeoutExpired:
            c.process.kill()
            c.process.wait()


@pytest.fixture(params=BACKENDS)
def collector(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Collector]:
    """A real `mcpmeter serve` on each backend (SQLite file, fresh PostgreSQL database)."""
    if request.param == "sqlite":
        c = start_collector(tmp_path / "collector.db")
        yield c
        stop_collector(c)
        return
    with store_location(request.param, tmp_path) as url:
        c = start_collector(url, log=tmp_path / "collector.log")
        yield c
        stop_collector(c)

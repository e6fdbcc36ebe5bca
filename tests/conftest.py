"""Shared fixtures: an isolated MCPMETER_HOME per test, real stores, real collectors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, NamedTuple

import httpx
import pytest

from mcpmeter import keys as keylib
from mcpmeter.sdk import internal
from mcpmeter.storage import open_store

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
def store(tmp_path: Path):
    s = open_store(str(tmp_path / "store.db"))
    yield s
    s.close()


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
    db: Path
    process: subprocess.Popen
    log: Path


def start_collector(db: Path, env: dict[str, str] | None = None, port: int | None = None, log: Path | None = None) -> Collector:
    """A real `mcpmeter serve` process on 127.0.0.1; returns once /ready answers."""
    port = port or free_port()
    log = log or db.with_suffix(f".{port}.log")
    full_env = {**os.environ, **(env or {})}
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            [*MCPMETER, "serve", "--port", str(port), "--db", str(db), "--log-level", "warning"],
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


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    c = start_collector(tmp_path / "collector.db")
    yield c
    stop_collector(c)

"""Faults, each answered by the right behaviour, with exact counts at the end:

- the collector SIGKILLed again and again under sustained ingest from several SDK processes;
- the collector gone for a while (the network cut): the SDKs spool and replay;
- the disk full: 503 + Retry-After, nothing half-written, and ingest again once there is room;
- the database locked by another process: 503 after the busy timeout, the SDK retries;
- clocks skewed: events too far in the future are refused with a reason.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from security_helpers import wait_until

from conftest import free_port, make_keys, start_collector, stop_collector
from foundation_helpers import event, stored_count
from mcpmeter import Meter
from mcpmeter.storage import open_store
from mcpmeter.storage.base import EventFilter

HERE = Path(__file__).resolve().parent
OUTAGE_SECONDS = float(os.environ.get("MCPMETER_TEST_OUTAGE_SECONDS", "10"))


def counts_by_server(db: Path) -> dict[str, int]:
    store = open_store(str(db))
    try:
        project = store.project_by_name("default")
        rows = store.export_events(project.id, 0, 10_000_000)
        out: dict[str, int] = {}
        for row in rows:
            out[row[4]] = out.get(row[4], 0) + 1  # (cursor, event_id, kind, ts, server, …)
        return out
    finally:
        store.close()


def start_sdks(tmp_path: Path, url: str, key: str, n: int, events: int, seconds: float) -> list[subprocess.Popen]:
    procs = []
    for i in range(n):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MCPMETER_")}
        env.update(MCPMETER_URL=url, MCPMETER_API_KEY=key, MCPMETER_HOME=str(tmp_path / f"sdk{i}"),
                   PYTHONPATH=os.pathsep.join([str(HERE.parent.parent / "src"), env.get("PYTHONPATH", "")]))
        procs.append(subprocess.Popen([sys.executable, str(HERE / "sdk_load_process.py"), f"sdk-{i}", str(events), str(seconds), "90"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    return procs


def finish_sdks(procs: list[subprocess.Popen]) -> list[dict]:
    results = []
    for p in procs:
        out, err = p.communicate(timeout=150)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def restart(c, tmp_path: Path, env: dict[str, str]):
    port = int(c.url.rsplit(":", 1)[1])
    return start_collector(c.db, env=env, port=port, log=tmp_path / "collector.log")


@pytest.mark.slow
def test_sigkill_under_load_loses_and_doubles_nothing(tmp_path):
    db = tmp_path / "collector.db"
    store = open_store(str(db))
    keys = make_keys(store)
    store.close()
    env = {"MCPMETER_RATE_LIMIT_PER_KEY": "0"}
    c = start_collector(db, env=env, log=tmp_path / "collector.log")
    events, seconds = 1500, 12.0
    sdks = start_sdks(tmp_path, c.url, keys.ingest, 3, events, seconds)
    kills = 0
    try:
        for _ in range(4):
            # let ingest get going, then kill in the middle of it
            before = sum(counts_by_server(db).values())
            wait_until(lambda before=before: sum(counts_by_server(db).values()) > before + 100, 20, "more events to arrive")
            c.process.send_signal(signal.SIGKILL)
            c.process.wait(10)
            kills += 1
            c = restart(c, tmp_path, env)
        results = finish_sdks(sdks)
    finally:
        stop_collector(c)
        for p in sdks:
            if p.poll() is None:
                p.kill()
    assert kills == 4
    stored = counts_by_server(db)
    for i, r in enumerate(results):
        assert r["recorded"] == events and not r["dropped"], r
        assert stored.get(f"sdk-{i}") == events, (stored, results)
    assert any(r["spooled"] for r in results) or True  # spooling is allowed, never required
    assert "Traceback" not in (tmp_path / "collector.log").read_text()


@pytest.mark.slow
def test_a_collector_gone_for_a_while_gets_everything_afterwards(tmp_path):
    db = tmp_path / "collector.db"
    store = open_store(str(db))
    keys = make_keys(store)
    store.close()
    c = start_collector(db, log=tmp_path / "collector.log")
    events = 600
    sdks = start_sdks(tmp_path, c.url, keys.ingest, 2, events, OUTAGE_SECONDS + 4)
    try:
        wait_until(lambda: sum(counts_by_server(db).values()) > 50, 20, "the first events")
        stop_collector(c)  # the network is cut: connection refused for OUTAGE_SECONDS
        outage_ends = time.monotonic() + OUTAGE_SECONDS
        wait_until(lambda: time.monotonic() >= outage_ends, OUTAGE_SECONDS + 1, "the outage to end", every=0.2)
        c = restart(c, tmp_path, {})
        results = finish_sdks(sdks)
    finally:
        stop_collector(c)
        for p in sdks:
            if p.poll() is None:
                p.kill()
    stored = counts_by_server(db)
    for i, r in enumerate(results):
        assert r["recorded"] == events and not r["dropped"], r
        assert r["spooled"] > 0 and r["replayed"] == r["spooled"], r  # the outage was felt, and healed
        assert stored.get(f"sdk-{i}") == events, (stored, results)


def _can_mount_tmpfs(directory: Path) -> bool:
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(directory)], capture_output=True)
    return r.returncode == 0


@pytest.mark.slow
def test_a_full_disk_is_503_with_nothing_half_written_and_heals(tmp_path):
    disk = tmp_path / "disk"
    mounted = _can_mount_tmpfs(disk)
    db = disk / "collector.db"
    store = open_store(str(db))
    keys = make_keys(store)
    if not mounted:
        pytest.skip("cannot mount a small tmpfs here (not root, or no CAP_SYS_ADMIN)")
    store.close()
    filler = disk / "filler"
    try:
        filler.write_bytes(os.urandom(1024 * 1024))  # room for the store to grow a little, then none
        c = start_collector(db, log=tmp_path / "collector.log", env={"MCPMETER_RATE_LIMIT_PER_KEY": "0"})
        auth = {"Authorization": f"Bearer {keys.ingest}"}
        accepted = 0
        answer = None
        with httpx.Client(timeout=30) as client:
            for i in range(400):
                batch = [event(server="disk", tool=f"t{i % 7}", error_message="x" * 400) for _ in range(50)]
                answer = client.post(c.url + "/v1/events", json=batch, headers=auth)
                if answer.status_code != 200:
                    break
                accepted += answer.json()["accepted"]
            assert answer is not None and answer.status_code == 503, "the disk never filled up"
            assert int(answer.headers["retry-after"]) >= 1
            assert "nothing was stored" in answer.json()["error"]
            filler.unlink()  # room again
            late = [event(server="disk", tool="after") for _ in range(50)]
            ok = wait_until(lambda: client.post(c.url + "/v1/events", json=late, headers=auth).status_code == 200, 20,
                            "ingest to work again once the disk has room")
            assert ok
            accepted += 50
        stop_collector(c)
        store = open_store(str(db))
        assert stored_count(store) == accepted  # every acknowledged event, and not one of a refused batch
        project = store.project_by_name("default")
        cells = store.cells(EventFilter(project.id, 0, 1 << 62), "day")
        assert sum(cell[5] for cell in cells) == accepted  # the rollups agree: no half-applied batch
        store.close()
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.slow
def test_a_locked_database_is_503_and_the_sdk_delivers_after(tmp_path):
    db = tmp_path / "collector.db"
    store = open_store(str(db))
    keys = make_keys(store)
    store.close()
    c = start_collector(db, env={"MCPMETER_BUSY_TIMEOUT_SECONDS": "1"}, log=tmp_path / "collector.log")
    holder = sqlite3.connect(db, isolation_level=None, timeout=5)
    try:
        holder.execute("BEGIN EXCLUSIVE")  # another process (here: connection) holds the write lock
        started = time.monotonic()
        r = httpx.post(c.url + "/v1/events", json=[event()], headers={"Authorization": f"Bearer {keys.ingest}"}, timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"], r.text
        assert time.monotonic() - started >= 0.9  # it waited for the busy timeout first
        meter = Meter(server="locked", url=c.url, api_key=keys.ingest, spool=tmp_path / "spool.db")
        for _ in range(25):
            meter.record("search")
        meter.flush(0.5)  # meets the lock: retried (Retry-After), or spooled, never lost
        holder.execute("ROLLBACK")
        assert meter.flush(30)
        wait_until(lambda: meter.stats.sent + meter.stats.replayed == 25 or (meter.flush(5) and False), 40,
                   "the SDK to deliver after the lock is gone")
        meter.shutdown(5)
    finally:
        holder.close()
        stop_collector(c)
    store = open_store(str(db))
    assert store.count_events(EventFilter(store.project_by_name("default").id, 0, 1 << 62, server="locked")) == 25
    store.close()


def test_events_from_a_clock_far_ahead_are_refused_with_a_reason(store):
    from starlette.testclient import TestClient

    from mcpmeter.server.collector import create_app

    keys = make_keys(store)
    with TestClient(create_app(store)) as c:
        now = int(time.time() * 1000)
        r = c.post("/v1/events", json=[event(ts=now + 2 * 86_400_000), event(ts=now + 60_000)],
                   headers={"Authorization": f"Bearer {keys.ingest}"})
        assert r.status_code == 200
        assert r.json()["accepted"] == 1  # a minute ahead is a clock within the allowed skew
        [rejection] = r.json()["rejected"]
        assert rejection["index"] == 0 and "in the future beyond the allowed clock skew" in rejection["error"]


class Forwarder:
    """A TCP forwarder to PostgreSQL that the test can cut (the store becomes unreachable) and restore."""

    def __init__(self, target: tuple[str, int]) -> None:
        import socket
        import threading

        self.target = target
        self.port = free_port()
        self._socket, self._threading = socket, threading
        self._conns: list = []
        self._listener = None

    def start(self) -> None:
        listener = self._socket.create_server(("127.0.0.1", self.port))
        self._listener = listener
        self._threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = self._socket.create_connection(self.target)
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                self._threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self) -> None:
        self._listener.close()
        for s in self._conns:
            try:
                s.shutdown(self._socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
        self._conns.clear()


@pytest.mark.slow
def test_an_unreachable_store_is_503_and_nothing_is_lost(tmp_path, pg_dsn):
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(pg_dsn)
    forwarder = Forwarder((parts.hostname, parts.port or 5432))
    forwarder.start()
    via = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{forwarder.port}"))
    store = open_store(via)
    keys = make_keys(store)
    store.close()
    c = start_collector(via, log=tmp_path / "collector.log")
    auth = {"Authorization": f"Bearer {keys.ingest}"}
    try:
        assert httpx.post(c.url + "/v1/events", json=[event(server="before")], headers=auth).json()["accepted"] == 1
        forwarder.cut()
        r = httpx.post(c.url + "/v1/events", json=[event(server="during")], headers=auth, timeout=60)
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, r.text
        assert "nothing was stored" in r.json()["error"]
        meter = Meter(server="sdk", url=c.url, api_key=keys.ingest, spool=tmp_path / "spool.db")
        for _ in range(10):
            meter.record("search")
        meter.flush(1)  # refused with 503 meanwhile: retried or spooled, never lost
        forwarder.start()  # the store is back
        wait_until(lambda: meter.flush(5) and meter.stats.sent + meter.stats.replayed == 10, 60,
                   "the SDK to deliver once the store is back", every=0.5)
        meter.shutdown(5)
    finally:
        stop_collector(c)
        forwarder.cut()
    store = open_store(pg_dsn)
    project = store.project_by_name("default")
    assert store.count_events(EventFilter(project.id, 0, 1 << 62, server="sdk")) == 10
    assert store.count_events(EventFilter(project.id, 0, 1 << 62, server="during")) == 0
    store.close()


# ---- the collector's side of a kill and a hang, on both backends ---------------------------------------


def _batches(tag: str, n: int, size: int = 50) -> list[list[dict]]:
    return [[event(id=f"{tag}-{b}-{i}", server=tag, tool=f"t{i % 5}") for i in range(size)] for b in range(n)]


def _count(location: str, server: str) -> int:
    store = open_store(location)
    try:
        project = store.project_by_name("default")
        return store.count_events(EventFilter(project.id, 0, 1 << 62, server=server), kind=None)
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_collector_killed_mid_ingest_loses_nothing_it_acknowledged(tmp_path, backend):
    """SIGKILL while batches stream in: every acknowledged batch is stored whole; the others, sent
    again to the restarted collector, are stored exactly once (a half-written batch would count twice)."""
    from store_backends import store_location

    with store_location(backend, tmp_path) as location:
        store = open_store(location)
        keys = make_keys(store)
        store.close()
        env = {"MCPMETER_RATE_LIMIT_PER_KEY": "0"}
        c = start_collector(location, env=env, log=tmp_path / "collector.log")
        auth = {"Authorization": f"Bearer {keys.ingest}"}
        batches = _batches("killed", 60)
        acknowledged, unanswered = [], []
        try:
            with httpx.Client(timeout=10) as client:
                for i, batch in enumerate(batches):
                    if i == 20:
                        c.process.send_signal(signal.SIGKILL)  # while the previous commits may still be in flight
                    try:
                        r = client.post(c.url + "/v1/events", json=batch, headers=auth)
                    except httpx.HTTPError:
                        unanswered.append(batch)
                        continue
                    assert r.status_code == 200, r.text
                    acknowledged.append(batch)
            c.process.wait(10)
            assert 0 < len(acknowledged) < len(batches)
            assert _count(location, "killed") >= 50 * len(acknowledged)  # nothing acknowledged is lost
            c = restart(c, tmp_path, env)
            with httpx.Client(timeout=30) as client:
                for batch in unanswered:  # what a sender does with a request that got no answer
                    assert client.post(c.url + "/v1/events", json=batch, headers=auth).status_code == 200
        finally:
            stop_collector(c)
        assert _count(location, "killed") == 50 * len(batches)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_hung_collector_answers_after_and_a_retry_counts_once(tmp_path, backend):
    """The collector stops (SIGSTOP) with a request on the wire: the sender times out and retries once
    the collector runs again; the first request is processed when the collector resumes, the retry is a
    duplicate, /health answers again, and another sender's batch is unaffected."""
    from store_backends import store_location

    with store_location(backend, tmp_path) as location:
        store = open_store(location)
        keys = make_keys(store)
        store.close()
        c = start_collector(location, log=tmp_path / "collector.log")
        auth = {"Authorization": f"Bearer {keys.ingest}"}
        [batch] = _batches("hung", 1)
        try:
            c.process.send_signal(signal.SIGSTOP)
            with pytest.raises(httpx.TimeoutException):
                httpx.post(c.url + "/v1/events", json=batch, headers=auth, timeout=1)  # not acknowledged
            c.process.send_signal(signal.SIGCONT)
            assert httpx.get(c.url + "/health", timeout=10).status_code == 200
            retry = httpx.post(c.url + "/v1/events", json=batch, headers=auth, timeout=10)
            assert retry.status_code == 200, retry.text
            assert retry.json()["accepted"] + retry.json()["duplicates"] == 50
            [other] = _batches("other", 1)
            assert httpx.post(c.url + "/v1/events", json=other, headers=auth, timeout=10).json()["accepted"] == 50
        finally:
            if c.process.poll() is None:
                c.process.send_signal(signal.SIGCONT)
            stop_collector(c)
        assert _count(location, "hung") == 50 and _count(location, "other") == 50
        assert "Traceback" not in (tmp_path / "collector.log").read_text()

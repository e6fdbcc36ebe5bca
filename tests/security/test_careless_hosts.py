"""The recorder in a careless host (issue 12, items 5-8): it never breaks, blocks or leaks.

Real hosts are subprocesses running the real SDK (``careless_host_process.py``); the
collector is a real ``mcpmeter serve``, or a real TCP server that accepts connections and
never answers (a hung collector).
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from conftest import ROOT, start_collector, stop_collector
from foundation_helpers import stored_events
from mcpmeter import Meter
from mcpmeter.events import Event, event_id
from mcpmeter.sdk import internal
from mcpmeter.sdk.sinks import MemorySink
from mcpmeter.sdk.spool import Spool, spool_owner
from mcpmeter.storage import open_store

HOST = ROOT / "tests" / "security" / "careless_host_process.py"
EXIT_TIMEOUT = 2.0  # MCPMETER_EXIT_TIMEOUT's default
SLACK = 1.5  # the interpreter's own teardown on a shared, busy machine


class HungCollector:
    """Accepts every connection and never reads or answers."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.held: list[socket.socket] = []
        self._stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.held.append(conn)

    def close(self) -> None:
        self._stop = True
        self.thread.join(5)
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.fixture
def hung() -> Iterator[HungCollector]:
    server = HungCollector()
    yield server
    server.close()


def host(mode: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HOST), mode, *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def time_to_exit(proc: subprocess.Popen, line: str = "exiting") -> float:
    """Seconds from the host saying ``line`` (its main code is done) to its end."""
    assert proc.stdout is not None
    for out in proc.stdout:
        if out.strip() == line:
            break
    else:
        raise AssertionError(f"the host never said {line!r}: {proc.stderr.read() if proc.stderr else ''}")
    said = time.monotonic()
    proc.wait(60)
    took = time.monotonic() - said
    _, err = proc.communicate()  # (closes the pipes)
    assert proc.returncode == 0, err
    return took


def spooled(url: str, owner: str | None = None) -> int:
    from mcpmeter.paths import spool_path

    spool = Spool(spool_path(), 1 << 20)
    try:
        return spool.pending(url, owner)
    finally:
        spool.close()


def calls(db, tool: str | None = None) -> int:
    store = open_store(db)
    try:
        return sum(1 for e in stored_events(store) if e["kind"] == "tool_call" and (tool is None or e["tool"] == tool))
    finally:
        store.close()


# ---- item 5: exit with a hung collector, forked children, kill -9 --------------------------------


@pytest.mark.parametrize("meters", [1, 2])
def test_a_hung_collector_delays_the_exit_by_one_deadline_and_everything_is_spooled(hung, meters, tmp_path):
    proc = host("exit", str(meters), "25", env={"MCPMETER_URL": hung.url})
    took = time_to_exit(proc)
    assert took < EXIT_TIMEOUT + SLACK, f"exit took {took:.1f} s"
    assert spooled(hung.url, spool_owner(None, None)) == 25 * meters

    # Later the collector is there: the next run of the program delivers what was spooled.
    hung.close()
    c = start_collector(tmp_path / "late.db", port=hung.port)
    try:
        run = subprocess.run([sys.executable, str(HOST), "record", "host0", "late", "1"],
                             env={**os.environ, "MCPMETER_URL": hung.url}, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert calls(tmp_path / "late.db", "ping") == 25 * meters
        assert spooled(hung.url) == 0
    finally:
        stop_collector(c)


def test_dropped_meters_do_not_add_to_the_exit_wait(hung):
    proc = host("dropped", "3", "10", env={"MCPMETER_URL": hung.url})
    took = time_to_exit(proc)
    assert proc.returncode == 0
    assert took < EXIT_TIMEOUT + SLACK, f"exit took {took:.1f} s"
    assert spooled(hung.url) == 30


def test_a_shorter_exit_timeout_is_honoured(hung):
    proc = host("exit", "2", "5", env={"MCPMETER_URL": hung.url, "MCPMETER_EXIT_TIMEOUT": "0.5"})
    took = time_to_exit(proc)
    assert took < 0.5 + SLACK, f"exit took {took:.1f} s"
    assert spooled(hung.url) == 10


@pytest.mark.parametrize("kind", ["process", "pool"])
def test_events_recorded_in_multiprocessing_children_arrive(kind, tmp_path):
    c = start_collector(tmp_path / "kids.db")
    try:
        proc = host("children", kind, "6", env={"MCPMETER_URL": c.url})
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "children done" in out, err
        store = open_store(tmp_path / "kids.db")
        try:
            recorded = [e for e in stored_events(store) if e["tool"] == "child_call"]
        finally:
            store.close()
        expected = 12 if kind == "process" else 6  # two children x 6, or 6 tasks over the pool
        assert len(recorded) == expected
    finally:
        stop_collector(c)


def test_a_kill_9_loses_only_what_was_recorded_within_the_documented_window(tmp_path):
    """docs/security.md: events older than flush interval + 0.2 s (+ the request) survive a kill -9."""
    c = start_collector(tmp_path / "killed.db")
    try:
        proc = host("kill", "20", env={"MCPMETER_URL": c.url, "MCPMETER_FLUSH_INTERVAL": "0.5"})
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("recorded")
        time.sleep(0.5 + 0.2 + 0.8)  # the window, and the request on a busy machine
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        assert calls(tmp_path / "killed.db", "ping") == 20
    finally:
        stop_collector(c)


# ---- item 6: a value that cannot be encoded -----------------------------------------------------


class Unencodable:
    def __repr__(self) -> str:
        return "<unencodable>"


@pytest.mark.parametrize("where", ["collector", "local"])
def test_an_event_that_cannot_be_encoded_is_repaired_alone_and_the_rest_keeps_flowing(where, tmp_path):
    db = tmp_path / "store.db"
    c = start_collector(db) if where == "collector" else None
    meter = Meter(server="weblab", url=c.url if c else None, db=None if c else str(db), flush_interval=60)
    try:
        now = int(time.time() * 1000)
        bad = Event(id=event_id(now), kind="tool_call", ts=now, server="weblab", tool="odd",
                    attributes={"thing": Unencodable()})  # type: ignore[dict-item]
        meter._enqueue(bad)  # the integrations' path: a ready event, not built by new_event
        meter.record("before")
        assert meter.flush(10)  # and it tells the truth
        meter.record("after")
        assert meter.flush(10)
        store = open_store(db)
        try:
            by_tool = {e["tool"]: e for e in stored_events(store) if e["kind"] == "tool_call"}
        finally:
            store.close()
        assert set(by_tool) == {"odd", "before", "after"}
        assert "<unencodable>" in by_tool["odd"]["attributes"]
    finally:
        internal.errors.clear()  # the repair is reported as the SDK's own error
        meter.shutdown(5)
        if c:
            stop_collector(c)


def test_an_event_beyond_repair_is_dropped_and_counted():
    sink = MemorySink()
    meter = Meter(server="weblab", sink=sink, flush_interval=60)
    try:
        meter._enqueue(object())  # type: ignore[arg-type]  # not even an event: dropped, counted
        meter.record("fine")
        assert meter.flush(5)
        good_sink_events = [e.tool for e in sink.events if e.kind == "tool_call"]
        assert good_sink_events == ["fine"]
        assert meter.stats.dropped["invalid"] == 1
    finally:
        internal.errors.clear()
        meter.shutdown(5)


# ---- item 7: nothing raises into the host -------------------------------------------------------


@pytest.mark.parametrize("ts", ["12", "2026-01-01", float("nan"), float("inf"), -float("inf"), True, [1]])
def test_record_with_an_unusable_timestamp_drops_counts_and_never_raises(ts):
    sink = MemorySink()
    meter = Meter(server="weblab", sink=sink)
    try:
        meter.record("when", ts=ts)
        meter.record("fine")
        assert meter.flush(5)
        assert [e.tool for e in sink.events if e.kind == "tool_call"] == ["fine"]
        assert meter.stats.dropped["invalid"] == 1
    finally:
        internal.errors.clear()
        meter.shutdown(5)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


@pytest.mark.parametrize("is_async", [False, True])
def test_a_tool_exception_whose_str_fails_reaches_the_host_unchanged(is_async):
    import asyncio

    sink = MemorySink()
    meter = Meter(server="weblab", sink=sink)
    raised = Unprintable("boom")
    try:
        if is_async:
            @meter.tool
            async def fails_async() -> None:
                raise raised

            with pytest.raises(Unprintable) as caught:
                asyncio.run(fails_async())
        else:
            @meter.tool
            def fails() -> None:
                raise raised

            with pytest.raises(Unprintable) as caught:
                fails()
        assert caught.value is raised
        assert meter.flush(5)
        (call,) = [e for e in sink.events if e.kind == "tool_call"]
        assert (call.ok, call.error_type, call.error_message) == (False, "Unprintable", None)
    finally:
        meter.shutdown(5)


@pytest.mark.parametrize("name, value", [("MCPMETER_BATCH_SIZE", "lots"), ("MCPMETER_FLUSH_INTERVAL", "-1"),
                                         ("MCPMETER_MAX_QUEUE", "0"), ("MCPMETER_DISABLED", "maybe"),
                                         ("MCPMETER_HASH_USERS", "sure"), ("MCPMETER_SPOOL_MAX_MB", "1e9")])
def test_a_malformed_variable_is_logged_and_its_default_used(name, value, monkeypatch, caplog):
    monkeypatch.setenv(name, value)
    sink = MemorySink()
    meter = Meter(server="weblab", sink=sink)
    try:
        meter.record("fine")
        assert meter.flush(5)
        assert [e.tool for e in sink.events] == ["fine"]
        assert any(name in r.getMessage() and "using the default" in r.getMessage() for r in caplog.records)
    finally:
        meter.shutdown(5)


def test_an_unwritable_home_with_hashed_users_degrades_and_never_sends_a_user_in_clear(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("MCPMETER_HOME", str(blocker / "home"))  # cannot be created, even by root
    monkeypatch.setenv("MCPMETER_HASH_USERS", "true")
    sink = MemorySink()
    meter = Meter(server="weblab", sink=sink, user="alice@example.com")
    try:
        meter.record("fine")
        assert meter.flush(5)
        (e,) = sink.events
        assert e.user is not None and e.user.startswith("h:") and "alice" not in e.user
        assert any("user-hashing key" in r.getMessage() for r in caplog.records)
    finally:
        meter.shutdown(5)


# ---- item 8: dropped meters ---------------------------------------------------------------------


def workers() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "mcpmeter-worker")


def test_a_dropped_meter_delivers_what_it_had_and_its_worker_ends():
    before = workers()
    sink = MemorySink()
    for i in range(20):
        meter = Meter(server=f"short-lived-{i}", sink=sink, flush_interval=60)
        meter.record("once")
    del meter
    gc.collect()
    deadline = time.monotonic() + 10
    while workers() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert workers() == before, f"{workers() - before} worker threads leaked"
    assert len([e for e in sink.events if e.tool == "once"]) == 20


def test_a_decorated_tool_keeps_its_meter_alive():
    sink = MemorySink()
    meter = Meter(server="weblab", sink=sink)

    @meter.tool
    def ping() -> int:
        return 1

    ref = __import__("weakref").ref(meter)
    del meter
    gc.collect()
    assert ref() is not None  # the tool still records
    ping()
    assert ref().flush(5)
    assert [e.tool for e in sink.events] == ["ping"]
    ref().shutdown(5)

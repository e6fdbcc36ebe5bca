"""End to end: real `mcpmeter serve`, real SDK programs in their own processes, real reports.

The SDK program is driven over stdin so the test decides when calls happen:
``run START COUNT PAUSE`` makes calls START..START+COUNT-1 (PAUSE seconds apart) and answers
``done``; ``exit`` shuts the meter down and prints its stats as JSON.
Call i goes to tool ``TOOLS[i % 3]`` and fails when ``i % 4 == 0``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from conftest import MCPMETER, start_collector, stop_collector
from foundation_helpers import stored_events
from mcpmeter import Meter
from mcpmeter.events import MAX_ATTRIBUTE_VALUE, MAX_ATTRIBUTES, MAX_ERROR_MESSAGE, MAX_NAME
from mcpmeter.sdk.spool import Spool
from mcpmeter.storage import open_store

pytestmark = pytest.mark.slow

TOOLS = ("search", "details", "now")
ERRORS = {"search": "ValueError", "details": "KeyError", "now": "TimeoutError"}

PROGRAM = """
import asyncio, json, sys, time
from mcpmeter import Meter

meter = Meter(server="e2e", url=sys.argv[1], flush_interval=0.05)

@meter.tool(category="rag")
def search(i):
    if i % 4 == 0:
        raise ValueError(f"bad query {i}")
    return i

@meter.tool
def details(i):
    if i % 4 == 0:
        raise KeyError(i)
    return i

@meter.tool
async def now(i):
    if i % 4 == 0:
        raise TimeoutError("upstream")
    return i

TOOLS = [search, details, now]

def call(i):
    tool = TOOLS[i % 3]
    try:
        result = asyncio.run(tool(i)) if tool is now else tool(i)
        assert result == i
    except (ValueError, KeyError, TimeoutError):
        if i % 4:
            raise

for line in sys.stdin:
    command, *args = line.split()
    if command == "run":
        start, count, pause = int(args[0]), int(args[1]), float(args[2])
        for i in range(start, start + count):
            call(i)
            if pause:
                time.sleep(pause)
        print("done", flush=True)
    elif command == "exit":
        break
meter.shutdown(30)
print(json.dumps(meter.stats.as_dict()), flush=True)
"""


def expected(calls: range, users: int = 1) -> tuple[Counter, Counter]:
    per_tool = Counter(TOOLS[i % 3] for i in calls)
    errors = Counter(TOOLS[i % 3] for i in calls if i % 4 == 0)
    return Counter({k: v * users for k, v in per_tool.items()}), Counter({k: v * users for k, v in errors.items()})


class Program:
    """One SDK-using process."""

    def __init__(self, path: Path, url: str, user: str) -> None:
        env = {**os.environ, "MCPMETER_USER": user}
        self.process = subprocess.Popen(
            [sys.executable, str(path), url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env,
        )

    def run(self, start: int, count: int, pause: float = 0.0, wait: bool = True) -> None:
        self.process.stdin.write(f"run {start} {count} {pause}\n")
        self.process.stdin.flush()
        if wait:
            self.wait_done()

    def wait_done(self) -> None:
        line = self.process.stdout.readline()
        assert line.strip() == "done", f"program failed: {line!r} {self.process.stderr.read() if self.process.poll() is not None else ''}"

    def exit(self) -> dict:
        out, err = self.process.communicate("exit\n", timeout=60)
        assert self.process.returncode == 0, err
        assert "Traceback" not in err, err
        return json.loads(out.strip().splitlines()[-1])

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


@pytest.fixture
def program(tmp_path):
    path = tmp_path / "server_program.py"
    path.write_text(PROGRAM)
    started: list[Program] = []

    def start(url: str, user: str) -> Program:
        p = Program(path, url, user)
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()


def report(url: str) -> dict:
    done = subprocess.run([*MCPMETER, "report", "--format", "json", "--period", "1d", "--url", url],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def assert_report(r: dict, per_tool: Counter, errors: Counter, users: int) -> None:
    assert r["calls"] == sum(per_tool.values())
    assert r["errors"] == sum(errors.values())
    assert r["users"] == users
    assert {t["tool"]: t["calls"] for t in r["tools"]} == dict(per_tool)
    assert {t["tool"]: t["errors"] for t in r["tools"]} == {tool: errors[tool] for tool in per_tool}
    assert {(e["tool"], e["error_type"]): e["count"] for e in r["error_types"]} == {
        (tool, ERRORS[tool]): n for tool, n in errors.items()
    }


def test_two_users_calling_through_the_sdk_are_reported_exactly(tmp_path, program, store_url):
    collector = start_collector(store_url, log=tmp_path / "e2e.log")
    try:
        alice, bob = program(collector.url, "alice@example.com"), program(collector.url, "bob@example.com")
        calls = range(90)
        alice.run(calls.start, len(calls), wait=False)
        bob.run(calls.start, len(calls), wait=False)
        alice.wait_done()
        bob.wait_done()
        for stats in (alice.exit(), bob.exit()):
            assert (stats["recorded"], stats["sent"], stats["spooled"], stats["dropped"]) == (90, 90, 0, {})
        per_tool, errors = expected(calls, users=2)
        assert_report(report(collector.url), per_tool, errors, users=2)
    finally:
        stop_collector(collector)


def test_a_collector_killed_mid_run_loses_nothing_and_counts_nothing_twice(tmp_path, program, isolated_env, store_url):
    db = store_url  # a SQLite file or a PostgreSQL database: both must lose nothing acknowledged
    collector = start_collector(db, log=tmp_path / "crash.log")
    port = int(collector.url.rsplit(":", 1)[1])
    restarted = None
    try:
        sdk = program(collector.url, "carol@example.com")
        sdk.run(0, 400, pause=0.002, wait=False)
        # kill the collector as soon as the first events have arrived, while calls go on
        deadline = time.monotonic() + 20
        while httpx.get(collector.url + "/v1/usage/summary", params={"period": "1d"}).json()["calls"] == 0:
            assert time.monotonic() < deadline, "no events arrived"
            time.sleep(0.02)
        collector.process.kill()
        collector.process.wait(10)
        sdk.wait_done()  # all 400 calls made; many could not be delivered
        # once retries are exhausted the SDK spools; restart only after it has
        spool = Spool(isolated_env / "spool.db", 1 << 30)
        try:
            while spool.pending(collector.url) == 0:
                assert time.monotonic() < deadline, "nothing was spooled"
                time.sleep(0.05)
        finally:
            spool.close()

        restarted = start_collector(db, port=port, log=tmp_path / "crash.log")
        sdk.run(400, 100)
        stats = sdk.exit()
        assert stats["spooled"] > 0, "the collector was never down while the program called"
        assert stats["replayed"] == stats["spooled"]
        assert stats["recorded"] == 500 and stats["dropped"] == {}
        per_tool, errors = expected(range(500))
        assert_report(report(restarted.url), per_tool, errors, users=1)
    finally:
        stop_collector(collector)
        if restarted:
            stop_collector(restarted)


def test_one_oversized_event_does_not_cost_the_batch_it_travels_in(tmp_path):
    """An 11 MB error message (more than the collector takes in one body), an over-long tool
    name and too many attributes are clipped before they are queued: the collector stores
    every event of the batch, the three ordinary ones and the oversized one."""
    db = tmp_path / "clip.db"
    collector = start_collector(db)
    meter = Meter(server="clip", url=collector.url, batch_size=100, flush_interval=60, spool=str(tmp_path / "spool.db"))
    try:
        meter.record("search", duration_ms=3.0)
        meter.record("search", error_type="RuntimeError", error_message="x" * (11 * 1024 * 1024),
                     attributes={f"a{i}": "v" * 10_000 for i in range(100)})
        meter.record("t" * 1000, duration_ms=1e12)
        meter.record("details", duration_ms=4.0)
        assert meter.flush(30)
        assert (meter.stats.sent, meter.stats.spooled, dict(meter.stats.dropped)) == (4, 0, {})
    finally:
        meter.shutdown()
        stop_collector(collector)
    store = open_store(str(db))
    try:
        events = [e for e in stored_events(store) if e["kind"] == "tool_call"]
    finally:
        store.close()
    assert sorted(e["tool"] for e in events) == sorted(["search", "search", "details", "t" * (MAX_NAME - 1) + "…"])
    (failed,) = [e for e in events if e["error_type"]]
    assert len(failed["error_message"]) == MAX_ERROR_MESSAGE and failed["error_message"].endswith("…")
    attributes = json.loads(failed["attributes"])
    assert len(attributes) == MAX_ATTRIBUTES and all(len(v) == MAX_ATTRIBUTE_VALUE for v in attributes.values())
    assert max(e["duration_ms"] or 0 for e in events) == 86_400_000

"""Whose a spooled batch is, and batches the collector will not take (issue 12, items 1 and 2).

Two programs of two projects on one machine share the spool (same home, same URL): each
replays only its own batches, under its own key; a batch whose key stopped working is kept
and reported, never sent under another key. A batch the collector refuses (4xx) is dropped
and counted, never retried, and never holds up the batches after it.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import pytest
from scripted_server import Answer, Scripted

from conftest import ROOT, Keys, free_port, make_keys, start_collector, stop_collector
from foundation_helpers import event, stored_events
from mcpmeter import Meter
from mcpmeter.sdk import internal
from mcpmeter.sdk.spool import Spool, spool_owner
from mcpmeter.storage import open_store
from store_backends import BACKENDS, store_location

HOST = ROOT / "tests" / "security" / "careless_host_process.py"


def run_host(env: dict[str, str], *args: str) -> dict:
    """The real SDK in its own process (``careless_host_process.py record ...``); its stats."""
    out = subprocess.run([sys.executable, str(HOST), "record", *args], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return {"stats": json.loads(out.stdout.strip().splitlines()[-1]), "log": out.stderr}


def tools_of(db: str, project: str) -> dict[str, int]:
    store = open_store(db)
    try:
        counts: dict[str, int] = {}
        for e in stored_events(store, project):
            if e["kind"] == "tool_call":
                counts[e["tool"]] = counts.get(e["tool"], 0) + 1
        return counts
    finally:
        store.close()


def two_projects(db: str) -> tuple[int, Keys, Keys, dict[str, str], dict[str, str]]:
    """Projects alpha and beta in the store ``db``, and the environment of a program of each
    for a collector (not started) on a free port: (port, keys, keys, env, env)."""
    store = open_store(db)
    alpha, beta = make_keys(store, "alpha"), make_keys(store, "beta")
    store.close()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    return (port, alpha, beta, {"MCPMETER_URL": url, "MCPMETER_API_KEY": alpha.ingest},
            {"MCPMETER_URL": url, "MCPMETER_API_KEY": beta.ingest})


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_projects_on_one_machine_each_get_only_their_own_spooled_calls(backend, tmp_path):
    with store_location(backend, tmp_path) as db:
        port, _, _, a, b = two_projects(db)

        # The collector is down: both programs spool into the one spool of this home.
        assert run_host(a, "alpha-server", "alpha_tool", "5")["stats"]["spooled"] == 5
        assert run_host(b, "beta-server", "beta_tool", "3")["stats"]["spooled"] == 3

        c = start_collector(db, port=port, log=tmp_path / "collector.log")
        try:
            # Beta runs first once the collector is back: it replays its own 3, not alpha's 5.
            beta_run = run_host(b, "beta-server", "beta_tool", "1")["stats"]
            assert (beta_run["sent"], beta_run["replayed"]) == (1, 3)
            assert tools_of(db, "beta") == {"beta_tool": 4}
            assert tools_of(db, "alpha") == {}
            alpha_run = run_host(a, "alpha-server", "alpha_tool", "1")["stats"]
            assert (alpha_run["sent"], alpha_run["replayed"]) == (1, 5)
            assert tools_of(db, "alpha") == {"alpha_tool": 6}
            assert tools_of(db, "beta") == {"beta_tool": 4}
        finally:
            stop_collector(c)


def test_a_batch_whose_key_was_revoked_is_kept_reported_and_never_sent_with_another_key(tmp_path):
    db = str(tmp_path / "collector.db")
    port, alpha, beta, a, b = two_projects(db)
    url = a["MCPMETER_URL"]
    assert run_host(a, "alpha-server", "alpha_tool", "4")["stats"]["spooled"] == 4
    store = open_store(db)
    assert store.revoke_key(store.project_by_name("alpha").id, "alpha-ingest") == 1
    store.close()

    c = start_collector(db, port=port)
    try:
        refused = run_host(a, "alpha-server", "alpha_tool", "2")
        assert refused["stats"]["held"] == 2 and refused["stats"]["sent"] == 0  # the new ones are kept too
        assert "refused this program's key" in refused["log"]  # reported, once
        beta_run = run_host(b, "beta-server", "beta_tool", "1")["stats"]
        assert (beta_run["sent"], beta_run["replayed"]) == (1, 0)
        assert tools_of(db, "beta") == {"beta_tool": 1}
        assert tools_of(db, "alpha") == {}
        spool = Spool(tmp_path / "home" / "spool.db", 1 << 20)
        try:
            assert spool.pending(url, spool_owner(alpha.ingest, None)) == 6  # all of alpha's, still there
            assert spool.pending(url, spool_owner(beta.ingest, None)) == 0
        finally:
            spool.close()
    finally:
        stop_collector(c)


def test_batches_spooled_by_an_earlier_version_are_kept_and_never_replayed(tmp_path, caplog):
    """A spool written before batches had owners: whose they are cannot be known."""
    import sqlite3

    path = tmp_path / "spool.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE spool (id INTEGER PRIMARY KEY, url TEXT NOT NULL, events INTEGER NOT NULL, "
                 "body BLOB NOT NULL, created_at INTEGER NOT NULL)")
    conn.execute("INSERT INTO spool (url, events, body, created_at) VALUES (?, 2, ?, 0)",
                 ("http://127.0.0.1:1", gzip.compress(json.dumps([event(), event()]).encode())))
    conn.commit()
    conn.close()
    spool = Spool(path, 1 << 20)
    try:
        assert spool.unowned("http://127.0.0.1:1") == 2
        assert spool.oldest("http://127.0.0.1:1", spool_owner(None, None)) == []
        assert spool.put("http://127.0.0.1:1", spool_owner(None, None), b"x", 1)
    finally:
        spool.close()


# ---- batches the collector will not take ---------------------------------------------------------


def test_a_batch_the_collector_refuses_with_a_4xx_is_dropped_once_and_later_ones_get_through(tmp_path):
    """A real collector that takes at most 5 events per request refuses a batch of 8 (400)."""
    c = start_collector(tmp_path / "small.db", env={"MCPMETER_MAX_BATCH_EVENTS": "5"})
    meter = Meter(server="weblab", url=c.url, batch_size=50, flush_interval=60)
    try:
        for _ in range(8):
            meter.record("too_many")
        assert meter.flush(10)
        assert meter.stats.dropped["rejected_by_collector"] == 8 and meter.stats.spooled == 0
        refused = [e for e in internal.errors if "refused a batch of 8" in str(e)]
        assert len(refused) == 1  # tried once, never again
        internal.errors.clear()
        for _ in range(3):
            meter.record("after")
        assert meter.flush(10)
        assert tools_of(str(tmp_path / "small.db"), "default") == {"after": 3}
        assert meter.stats.sent == 3 + 1  # with the sdk.dropped report of the refused batch
    finally:
        meter.shutdown(5)
        stop_collector(c)


class Poisoning:
    """Stores every batch except those holding a tool named "poison", for which it answers
    500 (as a store that cannot hold one value does); a real HTTP server (``Scripted``)."""

    def __init__(self) -> None:
        self.stored: list[str] = []
        self.poison_hits = 0
        self.scripted = Scripted(answer=self._answer).__enter__()
        self.url = self.scripted.url

    def _answer(self, body: bytes) -> Answer:
        tools = [e.get("tool") for e in json.loads(body)]
        if "poison" in tools:
            self.poison_hits += 1
            return 500, {}, {"error": "cannot store"}
        self.stored.extend(t for t in tools if t)
        return 200, {}, {"accepted": len(tools), "duplicates": 0, "rejected": []}

    def close(self) -> None:
        self.scripted.__exit__(None, None, None)


def test_a_spooled_batch_that_keeps_failing_never_holds_up_the_ones_behind_it(tmp_path):
    spool_file = tmp_path / "spool.db"
    server = Poisoning()
    owner = spool_owner(None, None)
    spool = Spool(spool_file, 1 << 20)
    for tools in (["poison"], ["first"], ["second"]):  # spooled while the collector was down
        assert spool.put(server.url, owner, gzip.compress(json.dumps([event(tool=t) for t in tools]).encode()), 1)
    spool.close()
    meter = Meter(server="weblab", url=server.url, spool=spool_file, flush_interval=60)
    try:
        meter.record("fresh")
        assert meter.flush(10)
        assert server.stored[:3] == ["fresh", "first", "second"]  # the later batches went past it
        for i in range(2):  # two more rounds in which others get through
            meter.record(f"more{i}")
            assert meter.flush(10)
        reported = list(internal.errors)
        internal.errors.clear()
        assert meter.stats.dropped["poisoned_batch"] == 1
        assert any("failed 3 times" in str(e) for e in reported)
        hits = server.poison_hits
        assert 3 <= hits <= 4  # three rounds in which others got through (and perhaps one idle replay)
        meter.record("last")
        assert meter.flush(10)
        assert server.poison_hits == hits  # given up: never sent again
        assert server.stored == ["fresh", "first", "second", "more0", "more1", "last"]
        spool = Spool(spool_file, 1 << 20)
        assert spool.pending(server.url) == 0
        spool.close()
    finally:
        meter.shutdown(5)
        server.close()

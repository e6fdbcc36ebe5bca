"""Several real `mcpmeter serve` processes on one PostgreSQL database.

Clients post overlapping batches (and retry them) to different collectors at once; one
collector is SIGKILLed under load. Afterwards every event a collector acknowledged is
stored, nothing is counted twice, and the report every collector serves equals, figure for
figure, an oracle computed from the distinct events.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from conftest import Collector, make_keys, start_collector, stop_collector
from mcpmeter.storage import open_store
from mcpmeter.storage.base import EventFilter

sys.path.insert(0, str(Path(__file__).resolve().parent / "analytics"))
import oracle_breakdowns
from analytics_oracle import Filters, Oracle, generate, same, window_of

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(pg_dsn: str, tmp_path: Path) -> Iterator[tuple[list[Collector], object]]:
    """Three collectors on one fresh database, and the project's keys."""
    store = open_store(pg_dsn)
    keys = make_keys(store)
    store.close()
    collectors: list[Collector] = []
    errors: list[BaseException] = []

    def start(i: int) -> None:
        try:
            collectors.append(start_collector(pg_dsn, log=tmp_path / f"collector{i}.log"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        yield sorted(collectors, key=lambda c: c.url), keys
    finally:
        for c in collectors:
            stop_collector(c)


def client_batches(events: list[dict], seed: int) -> list[list[dict]]:
    """The events shuffled into small batches that overlap their neighbours (so every event
    is sent several times, by several clients)."""
    rng = random.Random(seed)
    order = events[:]
    rng.shuffle(order)
    out, i = [], 0
    while i < len(order):
        size = rng.randrange(20, 150)
        start = max(0, i - rng.randrange(0, 40)) if i else 0
        out.append(order[start:i + size])
        i += size
    return out


class Load:
    """Client threads posting batches round-robin over the collectors, retrying a failed
    request on the next collector, as the SDK's transport does with several URLs."""

    def __init__(self, collectors: list[Collector], key: str, events: list[dict], clients: int = 4) -> None:
        self.collectors = collectors
        self.key = key
        self.plans = [client_batches(events, seed) for seed in range(clients)]
        self.total = sum(len(p) for p in self.plans)
        self.acked: set[str] = set()  # ids of events in batches answered 2xx
        self.done = 0
        self.failures: list[str] = []
        self.retried = 0
        self.progress = threading.Condition()

    def run_client(self, k: int) -> None:
        with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {self.key}"}) as http:
            for n, batch in enumerate(self.plans[k]):
                for attempt in range(30):
                    target = self.collectors[(k + n + attempt) % len(self.collectors)]
                    try:
                        r = http.post(target.url + "/v1/events", json=batch)
                    except httpx.TransportError:
                        self.retried += 1
                        continue
                    if r.status_code in (429, 502, 503, 504):
                        self.retried += 1
                        continue
                    if r.status_code != 200:
                        self.failures.append(f"{target.url}: {r.status_code} {r.text[:200]}")
                        return
                    body = r.json()
                    assert body["accepted"] + body["duplicates"] == len(batch), body
                    with self.progress:
                        self.acked.update(e["id"] for e in batch)
                        self.done += 1
                        self.progress.notify_all()
                    break
                else:
                    self.failures.append(f"batch {n} of client {k} failed on every collector")
                    return

    def start(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self.run_client, args=(k,)) for k in range(len(self.plans))]
        for t in threads:
            t.start()
        return threads

    def wait_for(self, batches: int) -> None:
        with self.progress:
            assert self.progress.wait_for(lambda: self.done >= batches or self.failures, timeout=60)


def expected_report(oracle: Oracle, report: dict) -> dict:
    """The report build_report gives, computed by the oracle for the report's own window."""
    return {**oracle_breakdowns.report(oracle, window_of(report), Filters()), "project": "default"}


def check_everything(pg_dsn: str, collectors: list[Collector], read_key: str, events: list[dict], acked: set[str]) -> None:
    store = open_store(pg_dsn)
    try:
        project = store.project_by_name("default")
        stored = [row[1] for row in store.export_events(project.id, 0, 1_000_000)]
        assert len(stored) == len(set(stored)) == len(events), "every distinct event stored exactly once"
        assert acked <= set(stored), f"{len(acked - set(stored))} acknowledged events are missing"
        assert store.count_events(EventFilter(project.id, 0, 1 << 62), kind=None) == len(events)
    finally:
        store.close()
    oracle = Oracle(events)
    for c in collectors:
        for period in ("1d", "30d", "90d"):
            r = httpx.get(c.url + "/v1/usage/report", params={"period": period},
                          headers={"Authorization": f"Bearer {read_key}"}, timeout=30)
            assert r.status_code == 200, r.text
            report = r.json()
            problems = same(report, expected_report(oracle, report))
            assert not problems, f"{c.url} {period}:\n" + "\n".join(problems[:25])


def events_now(seed: int) -> list[dict]:
    """Events of the last ~100 days as of now: the collectors check them against their clock."""
    return generate(seed, int(time.time() * 1000) - 60_000, sessions=250, users=30)


def test_three_collectors_count_overlapping_retried_batches_exactly(cluster, pg_dsn):
    collectors, keys = cluster
    events = events_now(101)
    load = Load(collectors, keys.ingest, events)
    for t in load.start():
        t.join()
    assert not load.failures, load.failures
    assert load.done == load.total
    check_everything(pg_dsn, collectors, keys.read, events, load.acked)


def test_a_collector_killed_under_load_loses_no_acknowledged_event(cluster, pg_dsn):
    collectors, keys = cluster
    events = events_now(202)
    load = Load(collectors, keys.ingest, events)
    threads = load.start()
    load.wait_for(load.total // 3)  # a third of the batches acknowledged: the load is in full swing
    victim = collectors[0]
    os.kill(victim.process.pid, signal.SIGKILL)
    victim.process.wait()
    for t in threads:
        t.join()
    assert not load.failures, load.failures
    assert load.done == load.total, "every batch ended up acknowledged by a live collector"
    assert load.retried > 0, "requests to the killed collector were retried elsewhere"
    check_everything(pg_dsn, collectors[1:], keys.read, events, load.acked)


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_serve_with_several_workers_shares_one_store(backend, pg_dsn, tmp_path):
    db = pg_dsn if backend == "postgres" else str(tmp_path / "workers.db")
    store = open_store(db)
    keys = make_keys(store)
    store.close()
    c = start_collector(db, log=tmp_path / "workers.log", args=("--workers", "2"))
    try:
        events = events_now(303)[:600]
        load = Load([c], keys.ingest, events, clients=3)
        for t in load.start():
            t.join()
        assert not load.failures, load.failures
        store = open_store(db)
        try:
            project = store.project_by_name("default")
            assert store.count_events(EventFilter(project.id, 0, 1 << 62), kind=None) == len(events)
        finally:
            store.close()
        workers = psutil.Process(c.process.pid).children()
        assert len(workers) >= 2, workers
    finally:
        stop_collector(c)

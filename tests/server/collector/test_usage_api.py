"""GET /v1/usage/*, every figure checked against the oracle (tests/analytics/analytics_oracle.py).

In process (the ASGI app through TestClient) for each endpoint, period and filter; and
through a real `mcpmeter serve` process fed with retried, overlapping and concurrent
duplicate batches, whose answers must be exactly those of the events sent once.
"""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "analytics"))  # the oracle lives with the analytics tests

from analytics_oracle import DAY, HOUR, Filters, Oracle, batches, generate, same, window_of

from mcpmeter.server.collector import create_app
from mcpmeter.storage import open_store

_real = int(time.time() * 1000)
NOW = _real - _real % HOUR - HOUR + 2_222_222  # 37 min into the previous hour: the same alignment every run
SEED = 4242
ENDPOINTS = {
    "summary": Oracle.summary,
    "tools": Oracle.tools,
    "timeseries": Oracle.timeseries,
    "users": Oracle.users_answer,
    "errors": Oracle.errors,
    "clients": Oracle.clients,
    "sessions": Oracle.sessions_answer,
}
WINDOWS = {
    "1h": {"period": "1h", "to": str(NOW)},
    "1d": {"period": "1d", "to": str(NOW)},
    "7d": {"period": "7d", "to": str(NOW)},
    "90d": {"period": "90d", "to": str(NOW)},
    "from-to": {"from": str(NOW - 40 * DAY + 7), "to": str(NOW - 2 * DAY - 3 * HOUR)},
}
FILTERS = {
    "all": Filters(),
    "server": Filters(server="archon"),
    "tool": Filters(tool="search"),
    "client": Filters(client="claude-code"),
    "server+tool+client": Filters(server="weblab", tool="search", client="cursor"),
}


@pytest.fixture(scope="module")
def events():
    return generate(SEED, NOW, sessions=400, users=30)


@pytest.fixture(scope="module")
def oracle(events):
    return Oracle(events)


def params(window: str, f: Filters) -> dict:
    return {**WINDOWS[window], **{k: v for k, v in f._asdict().items() if v is not None}}


def check(answer: dict, endpoint: str, oracle: Oracle, f: Filters) -> None:
    assert answer.pop("project") == "default"
    problems = same(answer, ENDPOINTS[endpoint](oracle, window_of(answer), f))
    assert not problems, f"{endpoint}:\n" + "\n".join(problems[:20])


@pytest.fixture(scope="module")
def app_client(tmp_path_factory, events):
    store = open_store(str(tmp_path_factory.mktemp("api") / "store.db"), durable=False)
    with TestClient(create_app(store), client=("127.0.0.1", 5000), base_url="http://127.0.0.1") as client:
        accepted = duplicates = 0
        for batch in batches(events, SEED, overlap=True):
            body = client.post("/v1/events", json=batch).json()
            accepted, duplicates = accepted + body["accepted"], duplicates + body["duplicates"]
        assert accepted == len(events) and duplicates > 0
        yield client
    store.close()


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("name", FILTERS)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_every_figure_over_http(app_client, oracle, endpoint, window, name):
    r = app_client.get(f"/v1/usage/{endpoint}", params=params(window, FILTERS[name]))
    assert r.status_code == 200, r.text
    check(r.json(), endpoint, oracle, FILTERS[name])


def test_a_real_collector_counts_retried_overlapping_and_concurrent_batches_once(collector, events, oracle):
    groups = batches(events, SEED + 1, overlap=True)
    held_back = groups[-4:]  # sent concurrently below
    with httpx.Client(base_url=collector.url, timeout=30) as client:
        accepted, sent = 0, set()
        for batch in groups[:-4]:
            r = client.post("/v1/events", json=batch)
            assert r.status_code == 200, r.text
            accepted += r.json()["accepted"]
            sent |= {e["id"] for e in batch}
        for batch in groups[:-4]:  # every one retried: nothing new
            assert client.post("/v1/events", json=batch).json()["accepted"] == 0

    senders = 4
    for batch in held_back:  # the same batch from four connections at once
        start = threading.Barrier(senders)

        def send(_: int, start: threading.Barrier = start, batch: list = batch) -> dict:
            with httpx.Client(base_url=collector.url, timeout=30) as c:
                start.wait()
                r = c.post("/v1/events", json=batch)
                assert r.status_code == 200, r.text
                return r.json()

        with ThreadPoolExecutor(senders) as pool:
            answers = list(pool.map(send, range(senders)))
        ids = {e["id"] for e in batch}
        assert sum(a["accepted"] for a in answers) == len(ids - sent)  # once, whichever request won
        assert sum(a["accepted"] + a["duplicates"] for a in answers) == senders * len(batch)
        accepted += sum(a["accepted"] for a in answers)
        sent |= ids
    assert accepted == len(events)

    with httpx.Client(base_url=collector.url, timeout=30) as client:
        for endpoint in ENDPOINTS:
            for window, name in (("1d", "all"), ("90d", "all"), ("7d", "server"), ("from-to", "client")):
                r = client.get(f"/v1/usage/{endpoint}", params=params(window, FILTERS[name]))
                assert r.status_code == 200, r.text
                check(r.json(), endpoint, oracle, FILTERS[name])

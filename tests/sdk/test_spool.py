"""The HTTP sink: delivering to a real collector, retrying, spooling while it is down, replaying."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator

import httpx
import pytest
from scripted_server import Scripted

from conftest import free_port, start_collector, stop_collector
from foundation_helpers import event
from mcpmeter import Meter
from mcpmeter.sdk import internal
from mcpmeter.sdk.sinks import HttpSink
from mcpmeter.sdk.spool import Spool, spool_owner
from mcpmeter.sdk.transport import HttpTransport


def collector_calls(url: str) -> int:
    """Tool calls the collector holds (loopback: the default project, no key needed)."""
    return httpx.get(url + "/v1/usage/summary", params={"period": "1d"}, timeout=10).json()["calls"]


def spooled(path, url: str) -> int:
    spool = Spool(path, 1 << 20)
    try:
        return spool.pending(url)
    finally:
        spool.close()


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


@pytest.fixture
def meters() -> Iterator[list[Meter]]:
    made: list[Meter] = []
    yield made
    for meter in made:
        meter.shutdown(5)


def ping_tool(meter: Meter):
    @meter.tool
    def ping(i: int) -> int:
        return i

    return ping


# ---- a collector that is up ---------------------------------------------------------------------


def test_calls_reach_the_collector(collector, meters):
    meter = Meter(server="weblab", url=collector.url)
    meters.append(meter)
    ping = ping_tool(meter)
    for i in range(40):
        ping(i)
    assert meter.flush(10)
    assert collector_calls(collector.url) == 40
    assert (meter.stats.sent, meter.stats.spooled, dict(meter.stats.dropped)) == (40, 0, {})


def test_the_sdk_uses_the_key_a_local_collector_saved(tmp_path, meters):
    c = start_collector(tmp_path / "strict.db", env={"MCPMETER_LOCAL_TRUST": "false"})
    try:
        assert httpx.post(c.url + "/v1/events", json=[event()]).status_code == 401  # keyless is refused
        meter = Meter(server="weblab", url=c.url.replace("127.0.0.1", "localhost"))
        meters.append(meter)
        meter.record("search")
        assert meter.flush(10)
        assert meter.stats.sent == 1 and meter.stats.spooled == 0
    finally:
        stop_collector(c)


def test_a_refused_key_keeps_the_events_in_the_spool(collector, meters, tmp_path):
    meter = Meter(server="weblab", url=collector.url, api_key="mcpm_not_a_real_key", spool=tmp_path / "spool.db")
    meters.append(meter)
    meter.record("search")
    meter.record("search")
    assert meter.flush(5)
    assert meter.stats.spooled == 2 and meter.stats.sent == 0
    assert spooled(tmp_path / "spool.db", collector.url) == 2
    assert collector_calls(collector.url) == 0


# ---- a collector that is down, then up --------------------------------------------------------


def test_events_are_spooled_while_the_collector_is_down_and_replayed_once_it_is_back(tmp_path, meters):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    meter = Meter(server="weblab", url=url, flush_interval=0.1)
    meters.append(meter)
    ping = ping_tool(meter)

    started = time.perf_counter()
    for i in range(30):
        ping(i)
    assert time.perf_counter() - started < 0.5  # the tool never waits for the network
    meter.flush(1)
    assert wait_for(lambda: meter.stats.spooled == 30)
    assert meter.stats.sent == 0

    c = start_collector(tmp_path / "late.db", port=port)
    try:
        for i in range(5):
            ping(i)
        assert meter.flush(10)  # a successful delivery replays the spool right away
        assert collector_calls(url) == 35
        assert meter.stats.replayed == 30 and meter.stats.sent == 5
        assert meter.flush(5)
        assert collector_calls(url) == 35  # nothing twice
    finally:
        stop_collector(c)


def test_the_spool_is_replayed_when_idle(tmp_path, meters, monkeypatch):
    monkeypatch.setattr(HttpSink, "REPLAY_EVERY", 0.1)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    meter = Meter(server="weblab", url=url, flush_interval=0.1)
    meters.append(meter)
    for _ in range(12):
        meter.record("search")
    meter.flush(1)
    assert wait_for(lambda: meter.stats.spooled == 12)
    c = start_collector(tmp_path / "late.db", port=port)
    try:
        assert wait_for(lambda: collector_calls(url) == 12), "the spool was not replayed"
        assert wait_for(lambda: meter.stats.replayed == 12)
    finally:
        stop_collector(c)


def test_a_spooled_batch_the_collector_already_has_counts_once(collector, meters, tmp_path):
    batch = [event(), event(), event()]
    body = gzip.compress(json.dumps(batch).encode())
    first = httpx.post(collector.url + "/v1/events", content=body,
                       headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert first.json()["accepted"] == 3
    # the answer was "lost": the SDK spooled the same batch and replays it later
    spool = Spool(tmp_path / "spool.db", 1 << 20)
    assert spool.put(collector.url, spool_owner(None, None), body, 3)  # a keyless program's own
    spool.close()
    meter = Meter(server="weblab", url=collector.url, spool=tmp_path / "spool.db")
    meters.append(meter)
    meter.record("search")
    assert meter.flush(10)
    assert meter.stats.replayed == 3
    assert collector_calls(collector.url) == 4
    assert spooled(tmp_path / "spool.db", collector.url) == 0


# ---- the spool itself --------------------------------------------------------------------------


def test_the_spool_keeps_batches_per_url_across_reopening(tmp_path):
    path = tmp_path / "spool.db"
    spool = Spool(path, 1 << 20)
    a, b = spool_owner("mcpm_a", None), spool_owner("mcpm_b", None)
    assert spool.put("http://a", a, b"one", 3) and spool.put("http://a", a, b"two", 2)
    assert spool.put("http://b", a, b"x", 1) and spool.put("http://a", b, b"theirs", 7)
    spool.close()
    again = Spool(path, 1 << 20)
    try:
        assert (again.pending("http://a", a), again.pending("http://b", a), again.pending("http://a")) == (5, 1, 12)
        rows = again.oldest("http://a", a)
        assert [(count, body) for _, count, body in rows] == [(3, b"one"), (2, b"two")]
        assert [body for _, _, body in again.oldest("http://a", b)] == [b"theirs"]
        again.remove(rows[0][0])
        assert again.pending("http://a", a) == 2
    finally:
        again.close()


def test_a_full_spool_refuses_and_writes_nothing(tmp_path):
    spool = Spool(tmp_path / "spool.db", max_bytes=100)
    try:
        assert spool.put("http://a", "k", b"x" * 60, 1)
        assert not spool.put("http://a", "k", b"y" * 60, 1)
        assert spool.pending("http://a") == 1 and spool.size_bytes() == 60
    finally:
        spool.close()


# ---- retries against a scripted server ----------------------------------------------------------


OK = (200, {}, {"accepted": 2, "duplicates": 0, "rejected": []})


def send(url: str, **kwargs):
    transport = HttpTransport(url, "mcpm_key")
    try:
        return transport.send(json.dumps([event(), event()]).encode(), **kwargs)
    finally:
        transport.close()


def test_429_is_retried_after_the_retry_after_delay(meters):
    with Scripted([(429, {"Retry-After": "1"}, {"error": "slow down"}), OK]) as server:
        outcome = send(server.url)
    assert outcome.delivered and outcome.accepted == 2
    assert len(server.hits) == 2
    assert server.hits[1].at - server.hits[0].at >= 0.95  # the jittered backoff alone would be ~0.25 s
    assert server.hits[0].headers["authorization"] == "Bearer mcpm_key"
    assert server.hits[0].headers["content-encoding"] == "gzip"
    assert len(json.loads(gzip.decompress(server.hits[0].body))) == 2


@pytest.mark.parametrize("status", [408, 502, 503, 504])
def test_transient_server_errors_are_retried(status):
    with Scripted([(status, {}, {"error": "busy"}), (status, {"Retry-After": "0"}, {"error": "busy"}), OK]) as server:
        outcome = send(server.url)
    assert outcome.delivered and len(server.hits) == 3


def test_a_retry_after_beyond_the_deadline_gives_up_in_time_and_spools():
    with Scripted([(429, {"Retry-After": "30"}, {"error": "slow down"}), OK]) as server:
        started = time.monotonic()
        outcome = send(server.url, deadline=time.monotonic() + 0.5)
    assert time.monotonic() - started < 2
    assert (outcome.delivered, outcome.spool) == (False, True)
    assert len(server.hits) == 1


def test_a_bad_request_is_not_retried_and_not_spooled():
    with Scripted([(400, {}, {"error": "not a JSON array", "hint": "see /openapi.json"})]) as server:
        outcome = send(server.url)
    assert (outcome.delivered, outcome.spool) == (False, False)
    assert "not a JSON array - see /openapi.json" in outcome.detail
    assert len(server.hits) == 1


def test_a_batch_the_collector_refuses_is_dropped_counted_and_reported(meters, tmp_path):
    refused = (422, {}, {"accepted": 0, "duplicates": 0, "rejected": [{"index": 0, "id": "x", "error": "bad"}]})
    with Scripted([refused]) as server:
        meter = Meter(server="weblab", url=server.url, spool=tmp_path / "spool.db")
        meters.append(meter)
        meter.record("search")
        assert meter.flush(5)
    reported = list(internal.errors)
    internal.errors.clear()
    assert any("refused a batch of 1 events" in str(e) for e in reported)
    assert meter.stats.dropped["rejected_by_collector"] == 1 and meter.stats.spooled == 0


def test_a_server_error_is_spooled_without_retrying():
    with Scripted([(500, {}, {"error": "boom"})]) as server:
        outcome = send(server.url)
    assert (outcome.delivered, outcome.spool) == (False, True)
    assert len(server.hits) == 1


def test_a_url_that_is_not_http_is_a_config_error():
    from mcpmeter.exceptions import ConfigError

    with pytest.raises(ConfigError, match="not an http"):
        HttpTransport("localhost:8890", None)

"""Several collectors on one store: each counts only what IT stored, so sum() over them is exact."""

from __future__ import annotations

import threading

import pytest
from metrics_helpers import dataset, post, samples, scrape, total

from conftest import start_collector, stop_collector

pytestmark = pytest.mark.slow


def _numbers(url: str) -> dict[str, float]:
    m = samples(scrape(url))
    return {"calls": total(m, "mcp_tool_executions_total"), "ingested": total(m, "mcpmeter_events_ingested_total"),
            "duplicates": total(m, "mcpmeter_events_duplicate_total"), "drops": total(m, "mcpmeter_sdk_dropped_events_total"),
            "sessions": total(m, "mcp_protocol_latency_seconds_count", step="initialize_to_tools_call")}


def test_two_collectors_with_retries_add_up_to_the_distinct_events(tmp_path):
    db = tmp_path / "shared.db"
    a, b = start_collector(db), start_collector(db)
    events, exp = dataset(sessions=3)
    events = events[:-1]  # the invalid one is covered elsewhere
    batches = [events[i:i + 7] for i in range(0, len(events), 7)]
    try:
        # Each batch goes to one collector; every third is retried at the other one at the same
        # time (both race for the same ids), every fifth is retried at the same collector.
        def send(url: str, batch: list) -> None:
            post(url, batch)

        for i, batch in enumerate(batches):
            first, second = (a, b) if i % 2 else (b, a)
            threads = [threading.Thread(target=send, args=(first.url, batch))]
            if i % 3 == 0:
                threads.append(threading.Thread(target=send, args=(second.url, batch)))
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            if i % 5 == 0:
                post(first.url, batch)
        sent = len(events) + sum(len(b) for i, b in enumerate(batches) if i % 3 == 0) + \
            sum(len(b) for i, b in enumerate(batches) if i % 5 == 0)
        na, nb = _numbers(a.url), _numbers(b.url)
        assert na["calls"] > 0 and nb["calls"] > 0  # both really took part
        assert na["calls"] + nb["calls"] == sum(exp.calls.values())
        assert na["ingested"] + nb["ingested"] == len(events)
        assert na["duplicates"] + nb["duplicates"] == sent - len(events)
        assert na["drops"] + nb["drops"] == sum(exp.drops.values())
        # a session whose handshake was split between collectors is timed by neither, never twice
        assert na["sessions"] + nb["sessions"] <= sum(n for (_, step), n in exp.steps.items() if step == "initialize_to_tools_call")

        # A restarted collector starts from zero and counts only what it stores from then on.
        stop_collector(a)
        a2 = start_collector(db)
        try:
            more, exp2 = dataset(sessions=1)
            more = more[:-1]
            post(a2.url, events[:20] + more)  # 20 already stored, the rest new
            n2 = _numbers(a2.url)
            assert n2["ingested"] == len(more) and n2["duplicates"] == 20
            assert n2["calls"] == sum(exp2.calls.values())
            assert na["calls"] + nb["calls"] + n2["calls"] == sum(exp.calls.values()) + sum(exp2.calls.values())
        finally:
            stop_collector(a2)
    finally:
        stop_collector(a)
        stop_collector(b)

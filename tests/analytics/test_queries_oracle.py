"""Every figure of every usage answer, checked against a hand computation on the raw events.

About 6,000 random events (see analytics_oracle.generate) go through the real ingest path
(decode_batch -> rows_for -> store.ingest) in shuffled batches of random sizes, into a real
SQLite file and a real PostgreSQL database; then each answer, for each period and filter, must equal what the oracle
computes from the event list for the window the answer reports.
"""

from __future__ import annotations

import time

import oracle_breakdowns
import pytest
from analytics_oracle import DAY, HOUR, Filters, Oracle, Window, generate, ingest, pct_ok, same, window_of

from mcpmeter.analytics import breakdowns, queries
from mcpmeter.analytics.periods import window
from mcpmeter.analytics.queries import Query
from mcpmeter.analytics.report import build_report
from mcpmeter.storage import open_store
from store_backends import BACKENDS, store_location

SEED = 20260101


def anchored_now() -> int:
    """A moment 17 min 23.456 s into the previous clock hour: the same alignment every run."""
    real = int(time.time() * 1000)
    return real - real % HOUR - HOUR + 1_043_456


NOW = anchored_now()

PERIODS = {
    "1h": dict(period="1h"),
    "6h": dict(period="6h"),
    "1d": dict(period="1d"),
    "7d": dict(period="7d"),
    "30d": dict(period="30d"),
    "90d": dict(period="90d"),
    "7d to a midnight": dict(period="7d", end=str(NOW - NOW % DAY)),
    "6h to an hour": dict(period="6h", end=str(NOW - NOW % HOUR - 5 * HOUR)),
    "from-to days": dict(start=str(NOW - 20 * DAY + 5 * HOUR + 17), end=str(NOW - 3 * DAY - 2 * HOUR)),
    "from-to hours": dict(start=str(NOW - 30 * HOUR - 123_456), end=str(NOW - 2 * HOUR - 7)),
}
FILTERS = {
    "all": Filters(),
    "server": Filters(server="weblab"),
    "tool on two servers": Filters(tool="search"),
    "client": Filters(client="cursor"),
    "server+tool": Filters(server="archon", tool="search"),
    "server+client": Filters(server="weblab", client="claude-code"),
    "server+tool+client": Filters(server="weblab", tool="details", client="claude-code"),
    "nothing matches": Filters(server="nope"),
    "category": Filters(category="read"),
    "server+category": Filters(server="archon", category="write"),
    "category+client": Filters(category="time", client="cursor"),
    "a category no tool has any more": Filters(category="tasks"),
}


@pytest.fixture(scope="module", params=BACKENDS)
def data(request, tmp_path_factory):
    events = generate(SEED, NOW)
    with store_location(request.param, tmp_path_factory.mktemp("oracle"), migrated=True) as location:
        store = open_store(location, durable=False)
        project = store.ensure_project("default")
        accepted, duplicates = ingest(store, project, events, NOW, seed=SEED)
        assert (accepted, duplicates) == (len(events), 0)
        yield store, project, Oracle(events)
        store.close()


def query(project, period: str, f: Filters) -> Query:
    return Query(project.id, window(now_ms=NOW, **PERIODS[period]), *f)


def check(answer: dict, expected: dict) -> None:
    problems = same(answer, expected)
    assert not problems, "\n".join(problems[:25])


def test_the_data_covers_what_the_checks_need(data):
    _, _, oracle = data
    kinds = {e.kind for e in oracle.events}
    assert {"tool_call", "initialize", "server_discover", "list_tools", "tool_listed", "session_end"} <= kinds
    recent = [e for e in oracle.calls if e.ts >= NOW - HOUR - NOW % HOUR]
    assert len(recent) >= 20, "the 1h window needs calls"
    assert sum(1 for e in oracle.calls if e.ok is False) >= 100
    durations = [e.duration for e in oracle.calls if e.duration is not None]
    assert min(durations) < 0.01 and max(durations) > 1000
    outcomes = {o: sum(1 for e in oracle.calls if e.outcome == o) for o in ("tool_error", "server_error", "caller_error", "cancelled")}
    assert min(outcomes.values()) >= 30, outcomes
    assert any(e.error_type == "server_exited" and e.outcome == "server_error" for e in oracle.calls)  # the attribute decides
    for name in ("category", "server+category", "category+client"):
        assert oracle.calls_in(Window(NOW - 90 * DAY, NOW, DAY), FILTERS[name]), name
    assert not oracle.calls_in(Window(NOW - 90 * DAY, NOW, DAY), FILTERS["a category no tool has any more"])
    assert any(e.category == "tasks" for e in oracle.calls)


@pytest.mark.parametrize("period", PERIODS)
@pytest.mark.parametrize("name", FILTERS)
def test_summary(data, period, name):
    store, project, oracle = data
    q = query(project, period, FILTERS[name])
    answer = queries.summary(store, q)
    check(answer, oracle.summary(window_of(answer), FILTERS[name]))
    p95, before = answer["latency_ms"]["p95"], answer["previous"]["latency_ms"]["p95"]
    assert answer["change"]["p95_ms"] == (None if p95 is None or not before else round((p95 - before) / before, 4))


@pytest.mark.parametrize("period", PERIODS)
@pytest.mark.parametrize("name", FILTERS)
def test_tools(data, period, name):
    store, project, oracle = data
    answer = queries.tools(store, query(project, period, FILTERS[name]))
    check(answer, oracle.tools(window_of(answer), FILTERS[name]))


@pytest.mark.parametrize("period", PERIODS)
@pytest.mark.parametrize("name", FILTERS)
def test_timeseries(data, period, name):
    store, project, oracle = data
    answer = queries.timeseries(store, query(project, period, FILTERS[name]))
    check(answer, oracle.timeseries(window_of(answer), FILTERS[name]))


@pytest.mark.parametrize("period", PERIODS)
@pytest.mark.parametrize("name", FILTERS)
def test_users(data, period, name):
    store, project, oracle = data
    answer = queries.users(store, query(project, period, FILTERS[name]))
    check(answer, oracle.users_answer(window_of(answer), FILTERS[name]))


@pytest.mark.parametrize("period", PERIODS)
@pytest.mark.parametrize("name", FILTERS)
def test_errors(data, period, name):
    store, project, oracle = data
    answer = queries.errors(store, query(project, period, FILTERS[name]))
    check(answer, oracle.errors(window_of(answer), FILTERS[name]))


@pytest.mark.parametrize("period", PERIODS)
@pytest.mark.parametrize("name", FILTERS)
def test_clients(data, period, name):
    store, project, oracle = data
    answer = queries.clients(store, query(project, period, FILTERS[name]))
    check(answer, oracle.clients(window_of(answer), FILTERS[name]))


@pytest.mark.parametrize("period", PERIODS)
@pytest.mark.parametrize("name", FILTERS)
def test_sessions(data, period, name):
    store, project, oracle = data
    answer = queries.sessions(store, query(project, period, FILTERS[name]))
    check(answer, oracle.sessions_answer(window_of(answer), FILTERS[name]))


@pytest.mark.parametrize("period", ["1h", "1d", "30d"])
def test_the_report_is_every_figure(data, period):
    store, project, oracle = data
    answer = build_report(store, query(project, period, Filters()))
    check(answer, oracle_breakdowns.report(oracle, window_of(answer), Filters()))


@pytest.mark.parametrize("period", ["1d", "30d"])
def test_the_report_is_the_same_figures(data, period):
    store, project, oracle = data
    report = build_report(store, query(project, period, Filters()))
    w = window_of(report)
    summary = oracle.summary(w, Filters())
    check({k: report[k] for k in ("users", "new_users", "calls", "errors", "success_rate", "calls_last_7d")},
          {k: summary[k] for k in ("users", "new_users", "calls", "errors", "success_rate", "calls_last_7d")})
    tools = oracle.tools(w, Filters())
    assert [(r["server"], r["tool"], r["calls"], r["users"], r["last_used"]) for r in report["tools"]] == [
        (r["server"], r["tool"], r["calls"], r["users"], r["last_used"]) for r in tools["tools"]]
    assert all(pct_ok(r["p99_ms"], e["latency_ms"]["p99"].exact) for r, e in zip(report["tools"], tools["tools"]))
    series = oracle.timeseries(w, Filters())
    assert [(p["t"], p["calls"], p["users"]) for p in report["timeseries"]] == [
        (p["t"], p["calls"], p["users"]) for p in series["points"]]
    assert report["error_types"] == oracle.errors(w, Filters())["types"]


def test_periods_cover_what_they_say(data):
    """7d is seven whole UTC days ending with today; 1d is 24 clock hours ending with this one;
    a `to` on a boundary ends the window there, with the period's full length."""
    store, project, _ = data
    for period, grain, span, end in (
            ("1h", HOUR, HOUR, NOW - NOW % HOUR + HOUR), ("6h", HOUR, 6 * HOUR, NOW - NOW % HOUR + HOUR),
            ("1d", HOUR, DAY, NOW - NOW % HOUR + HOUR), ("7d", DAY, 7 * DAY, NOW - NOW % DAY + DAY),
            ("30d", DAY, 30 * DAY, NOW - NOW % DAY + DAY), ("90d", DAY, 90 * DAY, NOW - NOW % DAY + DAY),
            ("7d to a midnight", DAY, 7 * DAY, NOW - NOW % DAY), ("6h to an hour", HOUR, 6 * HOUR, NOW - NOW % HOUR - 5 * HOUR)):
        w = window_of(queries.summary(store, query(project, period, Filters())))
        assert (w.grain_ms, w.end - w.start, w.end) == (grain, span, end), period


def test_calls_last_7d_is_the_7d_period(data):
    """For every period ending now, calls_last_7d is what period=7d counts."""
    store, project, _ = data
    week = queries.summary(store, query(project, "7d", Filters()))["calls"]
    for period in ("1h", "1d", "30d", "90d"):
        assert queries.summary(store, query(project, period, Filters()))["calls_last_7d"] == week, period


# ---- categories, usage actions, activation, measurements (oracle_breakdowns) -------------------

BREAKDOWN_PERIODS = ("1h", "1d", "7d", "90d", "6h to an hour", "from-to days", "from-to hours")
BREAKDOWN_FILTERS = ("all", "server", "client", "server+tool", "category", "server+category")


@pytest.mark.parametrize("period", BREAKDOWN_PERIODS)
@pytest.mark.parametrize("name", BREAKDOWN_FILTERS)
def test_categories(data, period, name):
    store, project, oracle = data
    answer = breakdowns.categories(store, query(project, period, FILTERS[name]))
    check(answer, oracle_breakdowns.categories(oracle, window_of(answer), FILTERS[name]))


@pytest.mark.parametrize("period", BREAKDOWN_PERIODS)
@pytest.mark.parametrize("name", ("all", "server", "client", "server+tool"))
def test_actions(data, period, name):
    store, project, oracle = data
    answer = breakdowns.actions(store, query(project, period, FILTERS[name]))
    check(answer, oracle_breakdowns.actions(oracle, window_of(answer), FILTERS[name]))


@pytest.mark.parametrize("period", BREAKDOWN_PERIODS)
@pytest.mark.parametrize("name", BREAKDOWN_FILTERS)
def test_activation(data, period, name):
    store, project, oracle = data
    answer = breakdowns.activation(store, query(project, period, FILTERS[name]))
    check(answer, oracle_breakdowns.activation(oracle, window_of(answer), FILTERS[name]))


def test_the_breakdowns_have_something_to_check(data):
    store, project, _ = data
    q = query(project, "90d", Filters())
    assert {r["action"] for r in breakdowns.actions(store, q)["actions"]} == {"page_view", "installation"}
    servers = breakdowns.activation(store, q)["servers"]
    assert all(s["probes"] > 0 and s["called"] > 0 and s["context"]["never_called"] >= 0 for s in servers)
    assert any(c["client"] == "crawler-bot" for s in servers for c in s["probe_clients"])
    assert any(s["sessions"] < s["followed"] for s in servers)  # users followed without sessions too
    assert {c["category"] for c in breakdowns.categories(store, q)["categories"]} == {"read", "write", "time", None}
    unknown = queries.errors(store, q)["unknown_tools"]
    assert unknown and {u["tool"] for u in unknown} == {"delete_everything"}


@pytest.fixture(scope="module", params=BACKENDS)
def metrics(request, tmp_path_factory):
    rows = oracle_breakdowns.generate_measurements(SEED, NOW)
    with store_location(request.param, tmp_path_factory.mktemp("measurements"), migrated=True) as location:
        store = open_store(location, durable=False)
        project = store.ensure_project("default")
        for i in range(0, len(rows), 400):  # several requests, as senders make them
            assert store.ingest_measurements(project.id, rows[i:i + 400]).accepted == len(rows[i:i + 400])
        yield store, project, rows
        store.close()


@pytest.mark.parametrize("period", ["1h", "6h", "12h", "1d", "7d", "6h to an hour", "from-to hours", "from-to days"])
@pytest.mark.parametrize("names", [None, "latency", "latency,builds"])
@pytest.mark.parametrize("server", [None, "archon"])
def test_measurements_answer_exactly_for_the_window(metrics, period, names, server):
    """Hour windows from hourly aggregates (not the whole UTC day), day windows from daily ones."""
    store, project, rows = metrics
    spec = dict(PERIODS.get(period, dict(period=period)))
    q = Query(project.id, window(now_ms=NOW, **spec), server=server)
    answer = breakdowns.measurements(store, q, names)
    w = window_of(answer)
    check(answer, oracle_breakdowns.measurements(rows, w, server, breakdowns.metric_names(names), Filters(server=server)))
    assert answer["series"] or period == "1h"

"""The shipped Grafana dashboard against a real Prometheus scraping a real collector.

Every PromQL expression of deploy/grafana/dashboards/mcp-analytics.json (Grafana variables
substituted) must be valid, return data, and - where the answer is known from the events sent -
return exactly that.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter, defaultdict

import httpx
import pytest
from metrics_helpers import (
    DASHBOARD,
    Expected,
    Prometheus,
    dashboard_exprs,
    dataset,
    post,
    scrape,
    substitute,
    wait_for,
)

from conftest import make_keys, start_collector, stop_collector
from mcpmeter.storage import open_store

pytestmark = pytest.mark.slow
METRICS_KEY = "mcpm_prometheus-scrape-key"


@pytest.fixture
def scraped(tmp_path):
    """A collector that received two rounds of known events, and a Prometheus that scraped both."""
    db = tmp_path / "c.db"
    store = open_store(str(db))
    keys = make_keys(store)
    store.close()
    c = start_collector(db, env={"MCPMETER_LOCAL_TRUST": "false", "MCPMETER_METRICS_KEY": METRICS_KEY})
    try:
        with Prometheus(tmp_path / "prometheus", [c.url.removeprefix("http://")], METRICS_KEY) as prom:
            prom.check_config()
            wait_for(prom.targets_up, "the first successful scrape")
            expected = Expected()
            for _ in range(2):  # two rounds between scrapes, so rate() has something to measure
                events, exp = dataset()
                post(c.url, events, keys.ingest)
                expected.merge(exp)
                calls = sum(expected.calls.values())
                wait_for(lambda calls=calls: prom.value("sum(mcp_tool_executions_total)") == calls, f"prometheus to see {calls} calls")
            mark = time.time()
            wait_for(lambda: prom.scrapes_after(mark), "one more scrape")
            yield prom, expected, scrape(c.url, keys.read)
    finally:
        stop_collector(c)


def _values(result: list[dict], *labels: str) -> dict:
    return {tuple(r["metric"].get(label, "") for label in labels): float(r["value"][1]) for r in result}


def test_every_dashboard_query_is_valid_and_answers_what_was_sent(scraped):
    prom, exp, exposition = scraped
    targets = dashboard_exprs()
    assert len(targets) >= 30
    tool_totals = Counter()
    for (_, tool, _), n in exp.calls.items():
        tool_totals[(tool,)] += n
    steps = Counter()
    step_sum = defaultdict(float)
    for (server, step), n in exp.steps.items():
        steps[(step,)] += n
        step_sum[(step,)] += sum(exp.step_ms[(server, step)]) / 1000
    auth_ok = sum(n for (_, _, ok), n in exp.auth.items() if ok == "true")
    exact = {
        "Servers with tool calls": lambda r: _values(r) == {(): 2},
        "Tools called": lambda r: _values(r) == {(): 5},
        # tools without errors still have a success="false" series (zero), so error panels are never empty
        "Calls by tool and outcome since collector start": lambda r: _values(r, "server", "tool", "success") == {
            (s, t, ok): exp.calls.get((s, t, ok), 0) for (s, t, _) in exp.calls for ok in ("true", "false")},
        "Most called tools": lambda r: _values(r, "tool") == dict(tool_totals),
        "Authentication success": lambda r: _values(r) == {(): pytest.approx(100 * auth_ok / sum(exp.auth.values()))},
        "Events dropped by recorders": lambda r: _values(r, "server", "reason") == dict(exp.drops),
        "Events over the series cap": lambda r: _values(r) == {(): 0},
    }
    checked = set()
    for title, expr, target in targets:
        result = prom.query(substitute(expr))
        assert result, f"{title!r}: {expr} returned nothing"
        for r in result:
            value = float(r["value"][1])
            assert math.isfinite(value) and value >= 0, f"{title!r}: {expr} gave {value} for {r['metric']}"
        if title in exact:
            assert exact[title](result), f"{title!r}: {expr} gave {result}"
            checked.add(title)
        if title == "Protocol flow since collector start":
            want = steps if target["refId"] == "A" else {k: pytest.approx(v / steps[k]) for k, v in step_sum.items()}
            assert _values(result, "step") == want, f"{expr}: {result}"
            checked.add(title)
    assert checked == set(exact) | {"Protocol flow since collector start"}

    # the dashboard uses only names this collector exposes
    families = {m.group(1) for m in re.finditer(r"^# TYPE (\S+) ", exposition, re.M)}
    for _, expr, _ in targets:
        selectors = re.sub(r"\b(by|without) \([^)]*\)", "", re.sub(r"\{[^}]*\}", "{}", expr))  # drop label names
        for name in re.findall(r"\b((?:mcp|mcpmeter)_[a-z_]+)", selectors):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in families or base in families, f"{name} in {expr} is not exposed"


def test_the_dashboard_variables_find_the_projects_and_servers(scraped):
    prom, exp, _ = scraped
    dashboard = json.loads(DASHBOARD.read_text())
    found = {}
    for var in dashboard["templating"]["list"]:
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"]["query"])
        assert m, var
        match = m.group(1).replace('{project=~"$project"}', '{project=~".*"}')
        r = httpx.get(f"{prom.url}/api/v1/label/{m.group(2)}/values", params={"match[]": match}, timeout=10).json()
        assert r["status"] == "success", r
        found[var["name"]] = set(r["data"])
    assert found == {"project": {"default"}, "server": {server for server, _, _ in exp.calls}}


def test_histograms_are_consistent_in_prometheus(scraped):
    """Buckets never decrease with le, and the +Inf bucket equals _count, for every histogram series."""
    prom, _, _ = scraped

    def family_key(metric: dict, suffix: str) -> str:
        labels = {k: v for k, v in metric.items() if k not in ("__name__", "le")}
        return json.dumps({**labels, "__family": metric["__name__"].removesuffix(suffix)}, sort_keys=True)

    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in prom.query('{__name__=~"(mcp|mcpmeter)_.*_bucket"}'):
        series[family_key(r["metric"], "_bucket")].append((float(r["metric"]["le"]), float(r["value"][1])))
    counts = {family_key(r["metric"], "_count"): float(r["value"][1])
              for r in prom.query('{__name__=~"(mcp|mcpmeter)_.*_count"}')}
    assert len(series) > 25
    for key, points in series.items():
        points.sort()
        values = [v for _, v in points]
        assert values == sorted(values), f"buckets of {key} decrease: {points}"
        assert points[-1][0] == math.inf and counts[key] == points[-1][1], key

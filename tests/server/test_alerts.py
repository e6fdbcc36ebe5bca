"""Alerting: the Prometheus rules shipped in deploy/prometheus/alerts.yml (checked with
`promtool test rules` on series that must and must not fire them), and the same conditions
computed by the collector for the dashboard's banner (GET /v1/alerts, in a real Chromium)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from starlette.testclient import TestClient

from conftest import ROOT, start_collector, stop_collector
from foundation_helpers import event, everything, now_ms
from mcpmeter.analytics import alerts
from mcpmeter.server.collector import create_app
from mcpmeter.storage.base import EventFilter

RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
MIN = 60_000


def test_the_shipped_rules_are_the_definitions():
    assert RULES.read_text() == alerts.rules_yaml(), "python -m mcpmeter.analytics.alerts > deploy/prometheus/alerts.yml"
    loaded = yaml.safe_load(RULES.read_text())
    assert [r["alert"] for r in loaded["groups"][0]["rules"]] == [r["alert"] for r in alerts.rules()]


def expected(alert: str, **labels: str) -> dict[str, Any]:
    """What promtool should see for one firing alert: its labels and its annotations filled in."""
    rule = next(r for r in alerts.rules() if r["alert"] == alert)
    fill = lambda text: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)  # noqa: E731
    return {"exp_labels": {**labels, **rule["labels"]}, "exp_annotations": {k: fill(v) for k, v in rule["annotations"].items()}}


def test_promtool_fires_each_rule_when_it_should_and_not_otherwise(tmp_path: Path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make tools` installs it"
    calls = 'mcp_tool_executions_total{project="default",server="%s",tool="%s",success="%s"}'
    http = 'mcpmeter_http_requests_total{instance="%s",route="%s",code="%s"}'
    series = [
        # weblab/flaky: 50 ok and 20 failed calls a minute (29 % failed): both burn rates
        (calls % ("weblab", "flaky", "true"), "0+50x150"), (calls % ("weblab", "flaky", "false"), "0+20x150"),
        # weblab/steady: 100 calls a minute, one failure in five minutes (0.2 %): nothing
        (calls % ("weblab", "steady", "true"), "0+100x150"), (calls % ("weblab", "steady", "false"), "0+0.2x150"),
        # weblab/rare: 2 calls, both failed: too few calls to alert
        (calls % ("weblab", "rare", "true"), "0x150"), (calls % ("weblab", "rare", "false"), "0 1 2x148"),
        # archon: busy for an hour, then silent
        (calls % ("archon", "rag_query", "true"), "0+10x60 600x90"),
        # collector c1 refuses 10 of every 110 ingest requests (9 %), c2 1 of 101 (1 %)
        (http % ("c1", "/v1/events", "200"), "0+100x150"), (http % ("c1", "/v1/events", "429"), "0+10x150"),
        (http % ("c2", "/v1/events", "200"), "0+100x150"), (http % ("c2", "/v1/events", "503"), "0+1x150"),
        (http % ("c2", "/v1/usage/summary", "401"), "0+500x150"),  # not an ingest route: does not count
    ]
    fast, slow = "MCPToolErrorBudgetBurnFast", "MCPToolErrorBudgetBurnSlow"
    flaky = {"project": "default", "server": "weblab", "tool": "flaky"}
    tests = {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series],
        "alert_rule_test": [
            {"eval_time": "10m", "alertname": fast, "exp_alerts": [expected(fast, **flaky)]},
            {"eval_time": "10m", "alertname": slow, "exp_alerts": []},  # 15 minutes before it fires
            {"eval_time": "40m", "alertname": slow, "exp_alerts": [expected(slow, **flaky)]},
            {"eval_time": "30m", "alertname": "MCPServerSilent", "exp_alerts": []},
            {"eval_time": "140m", "alertname": "MCPServerSilent",
             "exp_alerts": [expected("MCPServerSilent", project="default", server="archon")]},
            {"eval_time": "3m", "alertname": "MCPMeterIngestRefused", "exp_alerts": []},  # `for: 5m` not yet
            {"eval_time": "20m", "alertname": "MCPMeterIngestRefused",
             "exp_alerts": [expected("MCPMeterIngestRefused", instance="c1")]},
        ],
    }]}
    path = tmp_path / "alerts_test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    r = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


# ---- the same conditions from the store -----------------------------------------------------------


def test_call_counts_are_exact_for_any_window(store):
    project = store.ensure_project("default")
    now = now_ms()
    rows = [event(tool=f"t{i % 3}", ts=now - i * 7 * MIN, ok=i % 4 != 0) for i in range(300)]  # 35 hours back
    with TestClient(create_app(store), client=("127.0.0.1", 5000), base_url="http://127.0.0.1") as c:
        assert c.post("/v1/events", json=rows).json()["accepted"] == 300
    for back, length in ((5, 5), (60, 60), (360, 360), (1440, 1440), (125, 61), (30, 30)):
        start, end = now - back * MIN, now - (back - length) * MIN + 1
        raw = {(s, t): [n, e] for s, t, n, e in store.call_counts(EventFilter(project.id, start, end))}
        assert alerts.call_counts(store, project.id, start, end) == raw, (back, length)
    assert sum(n for n, _ in alerts.call_counts(store, project.id, now - 2200 * MIN, now + 1).values()) == \
        store.count_events(everything(store))


def fill(c: TestClient, headers: dict[str, str] | None = None) -> None:
    now = now_ms()
    calls = [event(server="weblab", tool="flaky", ts=now - i * 20_000, ok=i % 3 != 0) for i in range(12)]  # 4 min
    calls += [event(server="weblab", tool="steady", ts=now - i * 20_000) for i in range(30)]
    calls += [event(server="weblab", tool="rare", ts=now - 10_000, ok=False)]  # one failed call: too few to alert
    calls += [event(server="archon", tool="rag_query", ts=now - 3 * 60 * MIN - i * MIN) for i in range(5)]
    assert c.post("/v1/events", json=calls, headers=headers or {}).json()["accepted"] == len(calls)


def test_the_store_fires_what_the_rules_would(store):
    with TestClient(create_app(store), client=("127.0.0.1", 5000), base_url="http://127.0.0.1") as c:
        fill(c)
    project = store.project_by_name("default")
    firing = alerts.evaluate(store, project.id)
    assert [(a["alert"], a["server"], a.get("tool")) for a in firing] == [
        ("MCPToolErrorBudgetBurnFast", "weblab", "flaky"), ("MCPToolErrorBudgetBurnSlow", "weblab", "flaky"),
        ("MCPServerSilent", "archon", None)]
    assert firing[0]["error_rate"] == {"1h": 0.3333, "5m": 0.3333} and firing[0]["threshold"] == 0.144
    # an hour later weblab is silent too, and nothing burns any more (no calls in the short windows)
    later = alerts.evaluate(store, project.id, now_ms() + 61 * MIN)
    assert [(a["alert"], a["server"]) for a in later] == [("MCPServerSilent", "archon"), ("MCPServerSilent", "weblab")]


def test_recent_requests_count_ingest_answers_per_minute():
    r = alerts.RecentRequests()
    t = 1_000_000.0
    for i in range(100):
        r.add("/v1/events", 200, t + i)
    for i in range(4):
        r.add("/v1/events", 429, t + i)
        r.add("/v1/usage/summary", 401, t + i)  # not ingest
    assert r.window(now=t + 100) == (104, 4) and r.firing(now=t + 100) == []  # 3.8 %
    for i in range(4):
        r.add("/v1/traces", 503, t + 100 + i)
    assert r.window(now=t + 110) == (108, 8) and r.firing(now=t + 110)[0]["alert"] == "MCPMeterIngestRefused"
    assert r.window(now=t + 11 * 60 + 200) == (0, 0)  # ten minutes later: out of the window


def test_the_dashboard_shows_the_firing_alerts(tmp_path: Path):
    c = start_collector(tmp_path / "collector.db")
    try:
        _fill_http(c.url)
        for _ in range(10):  # requests with a wrong key: refused
            assert httpx.post(c.url + "/v1/events", json=[event()], headers={"X-API-Key": "mcpm_wrong"}).status_code == 401
        answer = httpx.get(c.url + "/v1/alerts").json()
        assert {a["alert"] for a in answer["firing"]} == {"MCPToolErrorBudgetBurnFast", "MCPToolErrorBudgetBurnSlow",
                                                          "MCPServerSilent", "MCPMeterIngestRefused"}
        assert answer["definitions"]["slo"] == alerts.SLO and answer["ingest_checked"] is True
        chromium = Path("/usr/bin/chromium")
        if not chromium.exists():
            pytest.skip("Chromium is not installed: apt-get install -y chromium (make test does)")
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox", "--headless=new"])
            page = browser.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(c.url + "/?period=1d")
            page.wait_for_selector("#alerts li[data-alert]", timeout=15_000)
            shown = page.eval_on_selector_all("#alerts li", "lis => lis.map(li => [li.dataset.alert, li.dataset.severity])")
            assert sorted(map(tuple, shown)) == sorted((a["alert"], a["severity"]) for a in answer["firing"])
            assert "flaky on weblab burns its error budget 14.4x too fast" in page.text_content("#alerts")
            browser.close()
            assert not problems, problems
    finally:
        stop_collector(c)


def _fill_http(url: str) -> None:
    now = now_ms()
    calls = [event(server="weblab", tool="flaky", ts=now - i * 20_000, ok=i % 3 != 0) for i in range(12)]
    calls += [event(server="archon", tool="rag_query", ts=now - 3 * 60 * MIN - i * MIN) for i in range(5)]
    assert httpx.post(url + "/v1/events", json=calls).json()["accepted"] == len(calls)

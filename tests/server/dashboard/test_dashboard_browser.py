"""The dashboard in a real headless Chromium against real `mcpmeter serve` processes filled by
`mcpmeter demo`: every chart drawn with the API's figures, filters in the URL, live calls,
the tool page, admin, sign-in without loopback trust, project isolation, light/dark/phone.

Needs Debian's `chromium` (`make test` installs it) and the `playwright` package; the
browser is never downloaded (no `playwright install`). Screenshots go to artifacts/.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import time
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from conftest import MCPMETER, ROOT, Collector, Keys, make_keys, start_collector, stop_collector
from foundation_helpers import event, now_ms
from mcpmeter.storage import open_store

ARTIFACTS = ROOT / "artifacts"
TIME_CHARTS = {"calls", "errors", "latency", "users"}

pytestmark = pytest.mark.slow
pytest_plugins = ["browser_helpers"]  # its fixture: browser


# ---- the sites ---------------------------------------------------------------------------------


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """No inherited MCPMETER_* settings (module fixtures run outside the per-test isolation)."""
    env = {name: "" for name in os.environ if name.startswith("MCPMETER_")}
    return {**env, "MCPMETER_HOME": str(home), **extra}


def demo_store(tmp: Path, env: dict[str, str]) -> Path:
    db = tmp / "demo.db"
    subprocess.run([*MCPMETER, "demo", "--days", "30", "--db", str(db)], env={**os.environ, **env},
                   check=True, capture_output=True, timeout=120)
    return db


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Collector]:
    """30 days of demo data in the default project; loopback trusted (the local case)."""
    tmp = tmp_path_factory.mktemp("dashboard")
    env = clean_env(tmp / "home")
    c = start_collector(demo_store(tmp, env), env=env)
    yield c
    stop_collector(c)


class Locked(NamedTuple):
    collector: Collector
    a: Keys  # the demo project ("default")
    b: Keys  # project "beta", with its own few calls


@pytest.fixture(scope="module")
def locked(tmp_path_factory) -> Iterator[Locked]:
    """The same demo data, but MCPMETER_LOCAL_TRUST=false: every view needs a key, as from afar."""
    tmp = tmp_path_factory.mktemp("dashboard-locked")
    env = clean_env(tmp / "home", MCPMETER_LOCAL_TRUST="false")
    db = demo_store(tmp, env)
    store = open_store(str(db))
    a, b = make_keys(store, "default"), make_keys(store, "beta")
    store.close()
    c = start_collector(db, env=env)
    beta = [event(server="beta-secret-server", tool="beta_only_tool", client_name="beta-client", user=f"b{i}",
                  ts=now_ms() - i * 60_000) for i in range(20)]
    assert httpx.post(c.url + "/v1/events", json=beta, headers=bearer(b.ingest)).json()["accepted"] == 20
    yield Locked(c, a, b)
    stop_collector(c)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def api(c: Collector, path: str, key: str | None = None, **params: Any) -> dict:
    r = httpx.get(c.url + path, params=params, headers=bearer(key) if key else None, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


# ---- the browser -------------------------------------------------------------------------------


def open_page(browser, **options):
    context = browser.new_context(**{"viewport": {"width": 1440, "height": 900}, "color_scheme": "light", **options})
    page = context.new_page()
    page.problems = []  # console errors and warnings, uncaught exceptions: each one fails the test
    page.on("console", lambda m: page.problems.append(f"console.{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: page.problems.append(f"uncaught: {e}"))
    return page


@pytest.fixture
def page(browser):
    page = open_page(browser)
    yield page
    page.context.close()
    assert not page.problems, page.problems


def ready(page, after: int = 0) -> None:
    """Wait until every panel of the page's load number `after + 1` (or later) has drawn."""
    page.wait_for_function("(g) => window.mcpmeter && window.mcpmeter.ready && window.mcpmeter.generation > g",
                           arg=after, timeout=15_000)


def reload_after(page, action) -> None:
    generation = page.evaluate("() => window.mcpmeter.generation")
    action()
    ready(page, generation)


def kpis(page) -> dict[str, tuple[str, str]]:
    return page.eval_on_selector_all("[data-kpi]", "els => Object.fromEntries(els.map(e => [e.dataset.kpi, [e.dataset.value, e.textContent]]))")


def calls_shown(page) -> int:
    return int(page.eval_on_selector("[data-kpi=calls]", "e => e.dataset.value"))


def spec_values(page, chart: str) -> list[list]:
    return page.evaluate("(id) => document.getElementById(id).__chart.spec.series.map(s => s.values)", f"chart-{chart}")


def bar_texts(page, chart: str) -> list[tuple[str, str]]:
    rows = page.eval_on_selector_all(f"#chart-{chart} g.row",
                                     "gs => gs.map(g => [g.querySelector('.bar-label').textContent, g.querySelector('.bar-value').textContent])")
    return [tuple(r) for r in rows]


def shot(page, name: str, **options) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True, animations="disabled", **options)
    return path


# The page's number formats (format.js), for comparing what is shown with what the API says.
def js_round(v: float) -> int:
    return math.floor(v + 0.5)


def fmt_int(n: int) -> str:
    return f"{n:,}"


def js_to_fixed(v: float, digits: int) -> str:
    """Number.prototype.toFixed: the double's exact value, a tie rounded away from zero
    (Python's format rounds a tie to even: 96.25 is "96.2" there and "96.3" on the page)."""
    return str(Decimal(v).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def fmt_pct(rate: float) -> str:
    return js_to_fixed(rate * 100, 1) + "%"


def fmt_ms(v: float) -> str:
    return f"{js_to_fixed(v, 1)} ms" if v < 10 else f"{js_round(v):,} ms"


def js_str(v: float | None) -> str:
    """String(v) in JavaScript (what the page keeps in data-value)."""
    if v is None:
        return ""
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def test_number_formats_match_the_browser(page):
    """The test's copies of format.js agree with the browser on ties and binary fractions,
    whatever values the data of the day happens to produce."""
    values = [0.9625 * 100, 96.25, 0.125, 1.005, 2.675, 0.05, 99.95, 9.95, 0.0, 1e-7, 12.5, 37.45]
    shown = page.evaluate("vs => vs.map(v => v.toFixed(1))", values)
    assert shown == [js_to_fixed(v, 1) for v in values]
    assert js_to_fixed(96.25, 1) == "96.3"  # where Python's own format says 96.2


def assert_kpis_match(page, s: dict) -> None:
    p95 = s["latency_ms"]["p95"]
    assert kpis(page) == {
        "users": [js_str(s["users"]), fmt_int(s["users"])],
        "calls": [js_str(s["calls"]), fmt_int(s["calls"])],
        "success_rate": [js_str(s["success_rate"]), "–" if s["success_rate"] is None else fmt_pct(s["success_rate"])],
        "p95": [js_str(p95), "–" if p95 is None else fmt_ms(p95)],
    }


# Panels the demo's data does not fill yet (no other usage actions): checked on data of their own
# in test_the_insight_panels_show_the_apis_figures.
NOT_IN_DEMO = {"actions"}


def charts_drawn(page, demo: bool = False) -> dict[str, dict]:
    """Every chart on the page (``demo``: but those the demo does not fill)."""
    return {c["name"]: c for c in page.eval_on_selector_all("[data-chart]", """els => els.map(e => ({
        name: e.dataset.chart, points: +e.dataset.points, markers: +(e.dataset.markers || 0),
        drawn: !!e.querySelector('canvas, svg')}))""") if not (demo and c["name"] in NOT_IN_DEMO)}


# ---- the overview --------------------------------------------------------------------------------


MIN = 60_000


def insight_events(now: int) -> list[dict]:
    """A small day of one server as the capture paths record it: a catalog with definition sizes,
    categories, every outcome class, a call to a tool that does not exist, a probe that lists
    the tools and never calls one, and a directory's page views and installations."""
    t0 = now - 50 * MIN

    def ev(i: int, kind: str, **fields: Any) -> dict:
        return {"id": f"i{i}", "kind": kind, "ts": t0 + i * 1000, "server": "shop", **fields}

    s1 = dict(session_id="s1", client_name="claude-code", user="u1")
    events = [ev(0, "initialize", ok=True, **s1), ev(1, "list_tools", ok=True, **s1),
              ev(2, "initialize", ok=True, session_id="s2", client_name="crawler-bot"),
              ev(3, "list_tools", ok=True, session_id="s2", client_name="crawler-bot")]
    events += [ev(4 + i, "tool_listed", tool=tool, result_bytes=size)
               for i, (tool, size) in enumerate((("search", 300), ("buy", 520), ("export", 900)))]
    events += [ev(10 + i, "tool_call", tool="search", category="read", ok=True, duration_ms=12.0, **s1) for i in range(5)]
    events += [ev(20, "tool_call", tool="buy", category="write", ok=True, duration_ms=40.0, **s1),
               ev(21, "tool_call", tool="buy", category="write", ok=False, error_type="tool_error",
                  attributes={"mcp.outcome": "tool_error"}, **s1),
               ev(22, "tool_call", tool="buy", category="write", ok=False, error_type="invalid_params",
                  attributes={"mcp.outcome": "caller_error"}, **s1),
               ev(23, "tool_call", tool="refund_all", ok=False, error_type="invalid_params",
                  attributes={"mcp.outcome": "caller_error"}, **s1),
               ev(24, "tool_call", tool="buy", category="write", error_type="cancelled",
                  attributes={"mcp.outcome": "cancelled"}, **s1)]
    events += [ev(30 + i, "page_view", user=u) for i, u in enumerate(("u1", "u2", "u1"))]
    events += [ev(40, "installation", user="u2")]
    return events


def test_the_insight_panels_show_the_apis_figures(tmp_path, page):
    """Categories, other actions, caller errors and unknown tools, the activation funnel, the
    context cost of listed tools and a custom metric, drawn with the API's figures."""
    env = clean_env(tmp_path / "home")
    db = tmp_path / "insights.db"
    store = open_store(str(db))
    keys = make_keys(store)
    store.close()
    c = start_collector(db, env=env)
    try:
        now = now_ms()
        r = httpx.post(c.url + "/v1/events", json=insight_events(now), headers=bearer(keys.ingest))
        assert r.status_code == 200 and r.json()["accepted"] == len(insight_events(now)), r.text
        metrics = [{"name": "queue_depth", "value": float(v), "timestamp": now - (40 - i) * MIN}
                   for i, v in enumerate((3, 9, 4, 7, 12, 5))]
        assert httpx.post(c.url + "/v1/measurements", json={"server": "shop", "metrics": metrics},
                          headers=bearer(keys.ingest)).status_code == 200
        assert httpx.post(c.url + "/v1/server-events", json={"events": [{"server": "shop", "type": "deploy", "ts": now - 30 * MIN}]},
                          headers=bearer(keys.ingest)).status_code == 200
        q = {"period": "1d"}
        page.goto(c.url + "/?period=1d")
        ready(page)
        charts = charts_drawn(page)
        for name in ("categories", "actions", "metric"):
            assert charts[name]["drawn"] and charts[name]["points"] > 0, charts[name]

        categories = api(c, "/v1/usage/categories", keys.read, **q)["categories"]
        assert bar_texts(page, "categories") == [(r["category"] or "(none)", f"{fmt_int(r['calls'])} · "
                                                  + ("–" if r["success_rate"] is None else fmt_pct(r["success_rate"])))
                                                 for r in categories]
        assert {r["category"]: r["calls"] for r in categories} == {"read": 5, "write": 4, None: 1}
        actions = api(c, "/v1/usage/actions", keys.read, **q)["by_server"]
        assert bar_texts(page, "actions") == [(f"{a['action']} · shop", f"{a['count']} · {a['users']} users") for a in actions]
        assert [(a["action"], a["count"], a["users"]) for a in actions] == [("page_view", 3, 2), ("installation", 1, 1)]

        caller = page.text_content("#caller-errors")
        assert "refund_all" in caller and "no such tool" in caller and "invalid_params" in caller
        s = api(c, "/v1/usage/summary", keys.read, **q)
        assert s["outcomes"] == {"ok": 6, "tool_error": 1, "server_error": 0, "caller_error": 2, "cancelled": 1}
        assert s["success_rate"] == round(6 / 7, 4)
        assert_kpis_match(page, s)
        assert "2 caller errors" in page.text_content("#kpi-success_rate") and "1 cancelled" in page.text_content("#kpi-success_rate")

        funnel = page.eval_on_selector_all("#activation tbody tr", "trs => trs.map(tr => [...tr.cells].map(td => td.textContent.trim()))")
        [shop] = api(c, "/v1/usage/activation", keys.read, **q)["servers"]
        assert (shop["followed"], shop["handshake"], shop["listed_tools"], shop["called"], shop["probes"]) == (2, 2, 2, 1, 1)
        assert shop["probe_clients"] == [{"client": "crawler-bot", "probes": 1}]
        assert funnel == [["shop", "2", "2", "2", "1 50.0%", "1"]]
        cost = page.eval_on_selector_all("#context-cost tbody tr", "trs => trs.map(tr => [...tr.cells].map(td => td.textContent.trim()))")
        assert cost == [["export shop", "225", "900", "never"], ["buy shop", "130", "520", "4"], ["search shop", "75", "300", "5"]]

        m = api(c, "/v1/usage/measurements", keys.read, name="queue_depth", **q)
        [series] = m["series"]
        assert (series["count"], series["min"], series["max"]) == (6, 3.0, 12.0)
        values = page.evaluate("() => document.querySelector('[data-metric=queue_depth]').__chart.spec.series.map(s => s.values)")
        by_t = {p["t"]: p for p in series["points"]}
        hours = page.evaluate("() => document.querySelector('[data-metric=queue_depth]').__chart.spec.x")
        from mcpmeter.analytics.periods import iso
        expected = [[by_t[iso(t * 1000)][k] if iso(t * 1000) in by_t else None for t in hours] for k in ("min", "avg", "max")]
        assert [[None if v is None else round(v, 4) for v in col] for col in values] == [
            [None if v is None else round(v, 4) for v in col] for col in expected]
        assert charts["metric"]["markers"] == 1  # the deploy
        shot(page, "dashboard-insights.png")
    finally:
        stop_collector(c)


def test_the_overview_draws_every_chart_with_the_apis_figures(site, page):
    page.goto(site.url + "/?period=30d")
    ready(page)
    charts = charts_drawn(page, demo=True)
    assert set(charts) == {"calls", "errors", "latency", "tools", "users", "clients", "protocols", "categories", "metric"}
    for name, chart in charts.items():
        if name == "metric":
            assert chart["markers"] == len(api(site, "/v1/usage/measurements", period="30d")["markers"]), chart
        assert chart["drawn"] and chart["points"] > 0, chart
        if name in TIME_CHARTS:
            assert chart["markers"] == 5, chart  # the demo's server events (demo.server_events)

    q = {"period": "30d"}
    s = api(site, "/v1/usage/summary", **q)
    assert_kpis_match(page, s)
    assert s["calls"] > 500
    ts = api(site, "/v1/usage/timeseries", **q)
    calls_by_tool = spec_values(page, "calls")
    assert [sum(col) for col in zip(*calls_by_tool)] == [p["calls"] for p in ts["points"]]
    assert calls_by_tool[0] == [p["by_tool"].get(ts["tools"][0], 0) for p in ts["points"]]
    errors, success = spec_values(page, "errors")
    assert errors == [p["errors"] for p in ts["points"]]
    assert success == [None if p["success_rate"] is None else round(p["success_rate"] * 100, 2) for p in ts["points"]]
    assert spec_values(page, "latency") == [[p[f"{k}_ms"] for p in ts["points"]] for k in ("p50", "p95", "p99")]
    users = api(site, "/v1/usage/users", **q)
    assert spec_values(page, "users") == [[p["returning_users"] for p in users["points"]], [p["new_users"] for p in users["points"]]]
    assert bar_texts(page, "tools") == [(t["tool"], f"{fmt_int(t['calls'])} · {fmt_pct(t['share'])}") for t in s["tools"]]
    clients = api(site, "/v1/usage/clients", **q)
    assert [label for label, _ in bar_texts(page, "clients")] == [c["client"] for c in clients["clients"]]
    assert bar_texts(page, "protocols") == [(p["protocol_version"], fmt_int(p["sessions"])) for p in clients["protocol_versions"]]
    never = api(site, "/v1/usage/tools", **q)["never_called"]
    assert {("weblab_export", "weblab"), ("weblab_clone", "weblab"), ("archive_project", "archon")} <= {
        (t["tool"], t["server"]) for t in never}
    assert page.eval_on_selector_all("#never-called b", "bs => bs.map(b => b.textContent)") == [t["tool"] for t in never]
    recent = api(site, "/v1/usage/errors", **q)["recent"][:12]
    rows = page.eval_on_selector_all("#recent-errors tbody tr",
                                     "trs => trs.map(tr => [tr.querySelector('b').textContent, tr.querySelector('.pill').textContent])")
    assert rows == [[r["tool"], r["error_type"]] for r in recent]
    assert page.locator("#markers li").count() == len(ts["markers"]) == 5
    assert page.text_content("#project-name") == "default"


def test_filters_change_the_figures_and_the_url(site, page):
    page.goto(site.url + "/?period=30d")
    ready(page)
    month = calls_shown(page)

    def query() -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}

    reload_after(page, lambda: page.click("[data-period='7d']"))
    assert query() == {"period": "7d"}
    week = api(site, "/v1/usage/summary", period="7d")
    assert calls_shown(page) == week["calls"] < month
    assert_kpis_match(page, week)

    reload_after(page, lambda: page.select_option("#f-server", "archon"))
    assert query() == {"period": "7d", "server": "archon"}
    assert_kpis_match(page, api(site, "/v1/usage/summary", period="7d", server="archon"))
    reload_after(page, lambda: page.select_option("#f-client", "cursor"))
    narrow = api(site, "/v1/usage/summary", period="7d", server="archon", client="cursor")
    assert query() == {"period": "7d", "server": "archon", "client": "cursor"}
    assert calls_shown(page) == narrow["calls"] < week["calls"]
    assert {t["server"] for t in narrow["tools"]} == {"archon"}
    assert [label for label, _ in bar_texts(page, "tools")] == [t["tool"] for t in narrow["tools"]]

    page.click("[data-period='custom']")
    today = time.strftime("%Y-%m-%d", time.gmtime())
    ten_days_ago = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 10 * 86_400))
    page.fill("#f-from", f"{ten_days_ago}T00:00")
    page.fill("#f-to", f"{today}T00:00")
    reload_after(page, lambda: page.click("#f-apply"))
    assert query() == {"from": f"{ten_days_ago}T00:00:00Z", "to": f"{today}T00:00:00Z", "server": "archon", "client": "cursor"}
    custom = api(site, "/v1/usage/summary", server="archon", client="cursor", **{"from": f"{ten_days_ago}T00:00:00Z", "to": f"{today}T00:00:00Z"})
    assert_kpis_match(page, custom)
    assert (custom["from"], custom["to"]) != (narrow["from"], narrow["to"])  # the custom window, not the 7 days

    reload_after(page, page.go_back)  # Back undoes the last filter
    assert query() == {"period": "7d", "server": "archon", "client": "cursor"}
    assert calls_shown(page) == narrow["calls"]

    page.goto(site.url + "/?period=7d&server=weblab&tool=weblab_details")  # a shared link opens the same view
    ready(page)
    assert (page.input_value("#f-server"), page.input_value("#f-tool")) == ("weblab", "weblab_details")
    assert_kpis_match(page, api(site, "/v1/usage/summary", period="7d", server="weblab", tool="weblab_details"))


def test_new_calls_appear_live_in_the_feed_counters_and_charts(site, page):
    page.goto(site.url + "/?period=30d")
    ready(page)
    page.wait_for_function("() => window.mcpmeter.live.connected")
    before = calls_shown(page)
    last_bucket = sum(col[-1] for col in spec_values(page, "calls"))
    calls = [event(server=server, tool=tool, client_name=client, duration_ms=ms, user=user)
             for server, tool, client, ms, user in [("weblab", "weblab_details", "claude-code", 118.0, "ann"),
                                                   ("archon", "rag_query", "cursor", 640.5, "bob"),
                                                   ("time", "get_current_time", "vscode-copilot", 2.4, "cy"),
                                                   ("weblab", "weblab_allocations", "claude-code", 231.0, "ann")]]
    calls.append(event(server="weblab", tool="weblab_search", client_name="cursor", duration_ms=2400.0, user="dee",
                       ok=False, error_type="TimeoutError", error_message="upstream did not answer within 30s"))
    started = time.monotonic()
    assert httpx.post(site.url + "/v1/events", json=calls).json()["accepted"] == 5
    page.wait_for_function("""(n) => document.querySelectorAll('#feed li').length === 5
        && +document.querySelector('[data-kpi=calls]').dataset.value === n""", arg=before + 5, timeout=2_000)
    assert time.monotonic() - started < 2.0
    assert page.eval_on_selector_all("#feed li", "lis => lis.map(li => li.dataset.tool)") == [
        "weblab_search", "weblab_allocations", "get_current_time", "rag_query", "weblab_details"]  # newest first
    assert "TimeoutError" in page.text_content("#feed li:first-child")
    page.wait_for_function("(n) => document.getElementById('chart-calls').__chart.spec.series.reduce((a, s) => a + s.values.at(-1), 0) === n",
                           arg=last_bucket + 5)
    s = api(site, "/v1/usage/summary", period="30d")  # the live figures are the stored ones
    assert s["calls"] == before + 5
    assert page.eval_on_selector("[data-kpi=success_rate]", "e => +e.dataset.value") == s["success_rate"]
    shot(page, "dashboard.png")


def test_the_export_button_downloads_the_report_for_the_filters_shown(site, page):
    page.goto(site.url + "/?period=30d&server=weblab")
    ready(page)
    downloads = {}
    for fmt in ("csv", "markdown", "json"):
        with page.expect_download() as info:
            page.click(f"[data-export={fmt}]")
        download = info.value
        downloads[fmt] = (download.suggested_filename, Path(download.path()).read_text())
    report = api(site, "/v1/usage/report", period="30d", server="weblab")
    name, text = downloads["csv"]
    assert name.startswith("mcpmeter-default-report-tools-") and name.endswith(".csv")
    lines = text.splitlines()
    assert lines[0].startswith("server,tool,category,calls,share")
    assert [line.split(",")[1] for line in lines[1:]] == [t["tool"] for t in report["tools"]]  # only weblab's tools
    assert sum(int(line.split(",")[3]) for line in lines[1:]) == report["calls"]
    name, text = downloads["markdown"]
    assert name.endswith(".md") and text.startswith("# MCP usage report") and "server `weblab`" in text
    assert f"{report['calls']} in this period" in text
    name, text = downloads["json"]
    assert name.endswith(".json") and json.loads(text)["calls"] == report["calls"]
    # the tool page exports that tool's report
    tool = report["tools"][0]["tool"]
    page.goto(site.url + f"/tools/{tool}?period=30d")
    ready(page)
    with page.expect_download() as info:
        page.click("[data-export=csv]")
    lines = Path(info.value.path()).read_text().splitlines()[1:]
    assert {line.split(",")[1] for line in lines} == {tool}


def test_the_tool_page_drills_down_from_the_overview(site, page):
    page.goto(site.url + "/?period=30d")
    ready(page)
    top = api(site, "/v1/usage/summary", period="30d")["tools"][0]
    with page.expect_navigation():
        page.click("#chart-tools a >> nth=0")
    ready(page)
    url = urlsplit(page.url)
    assert url.path == f"/tools/{top['tool']}"
    assert parse_qs(url.query) == {"period": ["30d"], "server": [top["server"]]}
    q = {"period": "30d", "server": top["server"], "tool": top["tool"]}
    assert_kpis_match(page, api(site, "/v1/usage/summary", **q))
    charts = charts_drawn(page)
    assert set(charts) == {"calls", "errors", "latency", "error-types", "clients", "users"}
    assert all(c["drawn"] and c["points"] > 0 for c in charts.values()), charts
    ts = api(site, "/v1/usage/timeseries", **q)
    assert spec_values(page, "calls") == [[p["calls"] for p in ts["points"]]]
    errors = api(site, "/v1/usage/errors", **q)
    assert bar_texts(page, "error-types") == [(t["error_type"], f"{fmt_int(t['count'])} · {fmt_pct(t['share'])}") for t in errors["types"]]
    assert page.locator("#recent-errors tbody tr").count() == min(15, len(errors["recent"]))
    clients = api(site, "/v1/usage/clients", **q)
    assert [label for label, _ in bar_texts(page, "clients")] == [c["client"] for c in clients["clients"]]
    assert page.text_content("#tool-name") == top["tool"]
    shot(page, "dashboard-tool.png")


def test_a_click_on_a_stacked_bar_opens_the_tool_it_belongs_to(site, page):
    page.goto(site.url + "/?period=30d")
    ready(page)
    bottom = api(site, "/v1/usage/timeseries", period="30d")["tools"][0]
    x, y = page.evaluate("""() => {  // the middle of the bottom segment of the busiest day's bar
        const c = document.getElementById('chart-calls').__chart, u = c.u, first = c.spec.series[0].values;
        const i = first.indexOf(Math.max(...first)), box = u.over.getBoundingClientRect();
        return [box.left + u.valToPos(c.spec.x[i], 'x'), box.top + u.valToPos(first[i] / 2, 'y')];
    }""")
    page.mouse.move(x, y)
    with page.expect_navigation():
        page.mouse.click(x, y)
    ready(page)
    assert urlsplit(page.url).path == f"/tools/{bottom}"


def test_admins_create_a_key_see_it_once_revoke_it_and_watch_health(site, page):
    page.goto(site.url + "/admin")
    page.wait_for_function("() => window.mcpmeter && window.mcpmeter.ready")
    page.fill("#new-key [name=name]", "ci-reader")
    page.click("#new-key button[type=submit]")
    page.wait_for_selector("#new-key-value")
    key = page.text_content("#new-key-value")
    assert key.startswith("mcpm_")
    assert api(site, "/v1/usage/summary", key=key)["project"] == "default"
    row = page.locator("tr[data-key='ci-reader']")
    assert "read" in row.text_content() and "active" in row.text_content()
    page.reload()
    page.wait_for_function("() => window.mcpmeter && window.mcpmeter.ready")
    assert key not in page.content()  # shown once
    revoke = page.locator("tr[data-key='ci-reader'] [data-revoke]")
    revoke.click()
    revoke.click()  # the second click confirms
    page.wait_for_function("() => document.querySelector(\"tr[data-key='ci-reader']\").textContent.includes('revoked')")
    deadline = time.monotonic() + 5
    while httpx.get(site.url + "/v1/usage/summary", headers=bearer(key)).status_code != 401:
        assert time.monotonic() < deadline, "a revoked key still reads"
        time.sleep(0.05)
    health = api(site, "/v1/admin/health")
    stats = page.eval_on_selector_all(".stat", "els => Object.fromEntries(els.map(e => [e.dataset.stat, e.querySelector('.value').textContent]))")
    assert stats["rejected"] == fmt_int(health["collector"]["rejected"])
    assert stats["accepted_since_start"] == fmt_int(health["ingest"]["accepted_since_start"])
    assert stats["writer_queue_rows"] == "0" and stats["writer_alive"] == "running"
    assert stats["storage_bytes"].endswith(("KB", "MB"))


def test_light_dark_and_phone(site, browser):
    phone = open_page(browser, color_scheme="dark")
    phone.set_viewport_size({"width": 390, "height": 844})
    try:
        phone.goto(site.url + "/?period=30d")
        ready(phone)
        assert phone.evaluate("() => document.scrollingElement.scrollWidth") <= 390  # nothing wider than the phone
        assert phone.evaluate("() => getComputedStyle(document.body).backgroundColor") == "rgb(11, 15, 23)"  # dark
        assert all(c["drawn"] and c["points"] > 0 for c in charts_drawn(phone, demo=True).values())
        shot(phone, "dashboard-phone-dark.png")
        phone.click("#theme-toggle")  # the user's choice beats the system's, and is remembered
        phone.wait_for_function("() => getComputedStyle(document.body).backgroundColor === 'rgb(246, 247, 251)'")
        phone.reload()
        ready(phone)
        assert phone.evaluate("() => [document.documentElement.dataset.theme, getComputedStyle(document.body).backgroundColor]") == [
            "light", "rgb(246, 247, 251)"]
        assert not phone.problems, phone.problems
    finally:
        phone.context.close()


# ---- sign-in and isolation (no loopback trust) ---------------------------------------------------


def sign_in(page, c: Collector, key: str, path: str = "/?period=30d") -> None:
    page.goto(c.url + path)
    page.wait_for_url("**/signin?next=*")
    page.fill("#key", key)
    page.click("#signin-submit")
    page.wait_for_url(c.url + path)
    ready(page)


def test_sign_in_with_a_read_key_when_loopback_is_not_trusted(locked, page):
    c = locked.collector
    assert httpx.get(c.url + "/", follow_redirects=False).status_code == 303
    page.goto(c.url + "/signin")
    page.fill("#key", locked.a.ingest)  # a key that cannot read is refused, with a reason
    page.click("#signin-submit")
    page.wait_for_function("() => document.getElementById('signin-error').textContent.includes('cannot read usage')")
    assert page.problems == ["console.error: Failed to load resource: the server responded with a status of 403 (Forbidden)"]
    page.problems.clear()
    sign_in(page, c, locked.a.read)
    assert_kpis_match(page, api(c, "/v1/usage/summary", key=locked.a.read, period="30d"))
    assert all(chart["drawn"] and chart["points"] > 0 for chart in charts_drawn(page, demo=True).values())
    (cookie,) = [k for k in page.context.cookies() if k["name"] == "mcpmeter_session"]
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["secure"]) == (True, "Strict", False)
    visible = page.evaluate("() => document.cookie + JSON.stringify(localStorage) + JSON.stringify(sessionStorage) + document.documentElement.outerHTML")
    assert locked.a.read not in visible and cookie["value"] not in visible  # scripts can read neither
    page.wait_for_function("() => window.mcpmeter.live.connected")  # /v1/live accepts the cookie too
    assert page.text_content("#who .badge") == "signed in"
    with page.expect_navigation():
        page.click("#sign-out")
    page.goto(c.url + "/?period=30d")
    page.wait_for_url("**/signin?next=*")


def test_a_key_of_one_project_sees_none_of_anothers(locked, browser):
    c = locked.collector
    secrets = ("beta-secret-server", "beta_only_tool", "beta-client")
    page = open_page(browser)
    bodies: list[str] = []

    def record(route) -> None:  # every JSON answer the page gets (the live stream aside)
        response = route.fetch()
        bodies.append(response.text())
        route.fulfill(response=response)

    page.route(re.compile(r"/v1/(usage|session|admin)"), record)
    try:
        sign_in(page, c, locked.a.read)
        reload_after(page, lambda: page.click("[data-period='90d']"))
        page.wait_for_function("() => window.mcpmeter.live.connected")
        assert httpx.post(c.url + "/v1/events", json=[event(server="beta-secret-server", tool="beta_only_tool")],
                          headers=bearer(locked.b.ingest)).json()["accepted"] == 1
        assert httpx.post(c.url + "/v1/events", json=[event(server="weblab", tool="after_beta")],
                          headers=bearer(locked.a.ingest)).json()["accepted"] == 1
        page.wait_for_function("() => document.querySelector('#feed li[data-tool=after_beta]')")
        assert page.locator("#feed li").count() == 1  # beta's call, committed first, never came
        assert len(bodies) > 10
        text = page.evaluate("() => document.body.innerText") + "".join(bodies)
        assert not [s for s in secrets if s in text]
        page.goto(c.url + "/tools/beta_only_tool?period=30d")  # asking for it by name shows nothing either
        ready(page)
        assert calls_shown(page) == 0
        text = page.evaluate("() => document.body.innerText") + "".join(bodies)
        assert not [s for s in secrets[::2] if s in text]
        assert '"project":"beta"' not in text.replace(" ", "")
        assert not page.problems, page.problems
    finally:
        page.context.close()

    page = open_page(browser)
    try:
        sign_in(page, c, locked.b.read)
        s = api(c, "/v1/usage/summary", key=locked.b.read, period="30d")
        assert s["calls"] == 21 and [t["tool"] for t in s["tools"]] == ["beta_only_tool"]
        assert_kpis_match(page, s)
        assert bar_texts(page, "tools") == [("beta_only_tool", "21 · 100.0%")]
        assert "weblab" not in page.evaluate("() => document.body.innerText")
        assert page.text_content("#project-name") == "beta"
        beta_health = api(c, "/v1/admin/health", key=locked.b.admin)
        assert beta_health["live_subscribers"] >= 1 and beta_health["collector"] is None  # collector-wide: operators only
        assert not page.problems, page.problems
    finally:
        page.context.close()
    deadline = time.monotonic() + 10
    while api(c, "/v1/admin/health", key=locked.a.admin)["collector"]["live_subscribers"]:  # closed pages unsubscribe
        assert time.monotonic() < deadline, "a closed page still holds a live subscription"
        time.sleep(0.05)


# After signing in, the browser stays on the collector's origin whatever `next` the sign-in link
# carried: browsers drop tabs and newlines in URLs and read a backslash as a slash, so
# `/%09/evil.example` would become `//evil.example`, another site (issue 12).
HOSTILE = ["/%09/evil.example", "/%0A/evil.example", "/%5Cevil.example", "%2F%2Fevil.example", "https://evil.example/",
           "/%09%5C/evil.example"]


def test_signing_in_never_leaves_the_collectors_origin(locked, browser):
    c, keys = locked.collector, locked.a
    origin = urlsplit(c.url).netloc
    for target in HOSTILE:
        context = browser.new_context()
        context.route("**/*", lambda route: route.abort() if urlsplit(route.request.url).netloc != origin
                      else route.continue_())  # nothing leaves the machine; the URL still tells where it went
        page = context.new_page()
        page.goto(f"{c.url}/signin?next={target}")
        page.fill("#key", keys.read)
        page.click("#signin-submit")
        page.wait_for_function("() => location.pathname !== '/signin'", timeout=15_000)
        page.wait_for_load_state()
        assert urlsplit(page.url).netloc == origin and urlsplit(page.url).path == "/", (target, page.url)
        context.close()
    context = browser.new_context()  # a good `next` is still followed
    page = context.new_page()
    page.goto(f"{c.url}/signin?next=%2Fadmin")
    page.fill("#key", keys.admin)
    page.click("#signin-submit")
    page.wait_for_url(c.url + "/admin", timeout=15_000)
    context.close()


def test_the_collector_stops_promptly_while_live_streams_are_open(collector):
    """uvicorn waits for open responses before it stops; the streams must end when told to."""
    with httpx.stream("GET", collector.url + "/v1/live", timeout=10) as stream:
        lines = stream.iter_lines()
        assert "event: hello" in [next(lines) for _ in range(3)]
        started = time.monotonic()
        collector.process.terminate()
        collector.process.wait(timeout=8)
        assert time.monotonic() - started < 8
        assert collector.process.returncode in (0, -15)  # uvicorn re-raises SIGTERM once it has shut down
        assert list(lines)[-1:] in ([], [""])  # the stream was closed by the server, cleanly

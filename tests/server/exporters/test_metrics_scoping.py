"""Collector-wide figures are for the collector's operators only (issue 12, item 13).

A project's key scrapes its project's series and nothing else: no other project's series,
no collector-wide counter (events ingested by all projects, requests by route, storage
size, the process). The operators (callers of project ``default``: the
``MCPMETER_METRICS_KEY``, its admins) see them all. The admin health panel follows the same
rule. A real collector on each backend."""

from __future__ import annotations

import time

import httpx
import pytest
from metrics_helpers import post, samples, scrape, uid

from conftest import make_keys, start_collector, stop_collector
from mcpmeter.storage import open_store
from store_backends import BACKENDS, store_location

METRICS_KEY = "mcpm_scrape-key-for-scoping-tests"
# Series that add up every tenant (or describe the collector itself).
COLLECTOR_WIDE = ("mcpmeter_events_ingested_total", "mcpmeter_events_duplicate_total", "mcpmeter_events_rejected_total",
                  "mcpmeter_http_requests_total", "mcpmeter_storage_size_bytes", "mcpmeter_auth_checks_total",
                  "mcpmeter_writer_commits_total", "mcpmeter_collector_info", "process_")


def calls(server: str, n: int) -> list[dict]:
    now = int(time.time() * 1000)
    return [{"id": uid(), "kind": "tool_call", "ts": now, "server": server, "tool": "t", "ok": True, "duration_ms": 3.0}
            for _ in range(n)]


@pytest.fixture(params=BACKENDS)
def tenants(request, tmp_path):
    with store_location(request.param, tmp_path) as db:
        store = open_store(str(db))
        keys = {name: make_keys(store, name) for name in ("default", "alpha", "beta")}
        store.close()
        c = start_collector(db, env={"MCPMETER_LOCAL_TRUST": "false", "MCPMETER_METRICS_KEY": METRICS_KEY},
                            log=tmp_path / "collector.log")
        try:
            post(c.url, calls("alpha-server", 3), key=keys["alpha"].ingest)
            post(c.url, calls("beta-secret-server", 5), key=keys["beta"].ingest)
            yield c, keys
        finally:
            stop_collector(c)


def test_a_projects_key_sees_only_its_projects_series(tenants):
    c, keys = tenants
    for key in (keys["alpha"].read, keys["alpha"].admin):
        text = scrape(c.url, key)
        m = samples(text)
        assert {dict(ls).get("project") for (_, ls) in m} == {"alpha"}  # every series is alpha's
        assert "beta" not in text
        assert not [name for (name, _) in m if name.startswith(COLLECTOR_WIDE)]
        assert sum(v for (n, ls), v in m.items() if n == "mcp_tool_executions_total") == 3


def test_the_collectors_operators_see_the_collector_wide_series(tenants):
    c, keys = tenants
    for key in (METRICS_KEY, keys["default"].admin):
        m = samples(scrape(c.url, key))
        names = {name for (name, _) in m}
        always = [w for w in COLLECTOR_WIDE if w != "mcpmeter_storage_size_bytes"]  # PostgreSQL does not tell its size
        assert all(any(n.startswith(wide) for n in names) for wide in always), sorted(names)
        assert sum(v for (n, _), v in m.items() if n == "mcpmeter_events_ingested_total") == 8  # every tenant's
        assert "beta-secret-server" not in str(m)  # still no other project's own series


def test_the_health_panel_shows_collector_figures_to_operators_only(tenants):
    c, keys = tenants
    alpha = httpx.get(c.url + "/v1/admin/health", headers={"Authorization": f"Bearer {keys['alpha'].admin}"}).json()
    assert alpha["project"] == "alpha" and alpha["collector"] is None
    assert alpha["ingest"]["accepted_since_start"] == 3 and alpha["sessions"] == 0
    assert "storage_bytes" not in str(alpha) and "8" not in str(alpha["ingest"])
    operator = httpx.get(c.url + "/v1/admin/health", headers={"Authorization": f"Bearer {keys['default'].admin}"}).json()
    assert operator["collector"]["accepted"] == 8 and operator["collector"]["writer_alive"] is True

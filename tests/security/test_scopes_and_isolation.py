"""Every endpoint refuses callers without the scope it needs, and one project's keys read
nothing of another's: the usage API, the dashboard's data and admin endpoints, /metrics,
and the MCP server (`mcpmeter mcp --url`) reading a real collector with a key.

The endpoints come from the app's own routes, so a new endpoint is covered (or fails
``required_scope`` until someone decides who may call it)."""

from __future__ import annotations

import json
import os
import sys

import anyio
import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from security_helpers import PAGES, app_routes, concrete, required_scope
from starlette.testclient import TestClient

from conftest import make_keys, start_collector, stop_collector
from foundation_helpers import event
from mcpmeter.server.collector import create_app

OTHER = "zzsecretserverzz"  # a server name only project "other" has: it must never appear in "mine"'s answers


@pytest.fixture
def two_projects(store):
    mine, other = make_keys(store, "mine"), make_keys(store, "other")
    with TestClient(create_app(store)) as c:
        assert c.post("/v1/events", json=[event(server="visible", tool="search", user="u1")],
                      headers={"Authorization": f"Bearer {mine.ingest}"}).json()["accepted"] == 1
        assert c.post("/v1/events", json=[event(server=OTHER, tool="zzsecrettoolzz", user="u2", ok=False, error_type="Boom")],
                      headers={"Authorization": f"Bearer {other.ingest}"}).json()["accepted"] == 1
        yield c, mine, other


def _request(c: TestClient, method: str, path: str, key: str | None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if method == "POST":
        headers["Content-Type"] = "application/json"
        return c.request(method, path, content=b"[]", headers=headers, follow_redirects=False)
    return c.request(method, path, headers=headers, follow_redirects=False)


def test_every_route_needs_its_scope(two_projects):
    c, mine, _ = two_projects
    keys = {"ingest": mine.ingest, "read": mine.read, "admin": mine.admin}
    checked = 0
    for method, route in app_routes(c.app):
        scope = required_scope(method, route)
        if scope is None:
            continue
        path = concrete(route)
        refused_status = 303 if route in PAGES else 401
        r = _request(c, method, path, None)
        assert r.status_code == refused_status, f"{method} {path} without a key: {r.status_code} {r.text[:200]}"
        if refused_status == 303:
            assert r.headers["location"].startswith("/signin")
        for name, key in keys.items():
            allowed = name == scope or name == "admin"
            if allowed and route == "/v1/live":
                continue  # an accepted subscription streams forever; its refusals are checked
            r = _request(c, method, path, key)
            if allowed:
                assert r.status_code not in (401, 403) and not (route in PAGES and r.status_code == 303), \
                    f"{method} {path} with a {name} key was refused: {r.status_code} {r.text[:200]}"
            else:
                expected = 303 if route in PAGES else 403
                assert r.status_code == expected, f"{method} {path} with a {name} key: {r.status_code} {r.text[:200]}"
                if expected == 403 and method != "HEAD":
                    assert f"`{scope}`" in r.json()["error"]
        checked += 1
    assert checked >= 25  # the usage API, ingest paths, admin endpoints, pages, /metrics, /v1/live


def test_a_projects_keys_read_nothing_of_another_project(two_projects):
    c, mine, other = two_projects
    seen = 0
    for method, route in app_routes(c.app):
        if method != "GET" or required_scope(method, route) not in ("read", "admin") or route == "/v1/live":
            continue
        for key in (mine.read, mine.admin):
            r = c.get(concrete(route), headers={"Authorization": f"Bearer {key}"}, params={"period": "30d"} if "usage" in route else None)
            if r.status_code in (400, 403):
                continue  # a parameter the route does not take, or a read key on an admin route
            assert r.status_code < 400, f"GET {route}: {r.status_code} {r.text[:300]}"
            for secret in (OTHER, "zzsecrettoolzz", "other-", '"other"'):
                assert secret not in r.text, f"GET {route} with project mine's key shows {secret!r}"
            seen += 1
    # and the other way round the same data is there: the check above can fail
    r = c.get("/v1/usage/tools", params={"period": "30d"}, headers={"Authorization": f"Bearer {other.read}"})
    assert OTHER in r.text
    metrics = c.get("/metrics", headers={"Authorization": f"Bearer {other.read}"}).text
    assert OTHER in metrics
    assert seen >= 12


def test_the_mcp_server_with_a_key_answers_only_for_that_keys_project(tmp_path, store_url):
    from mcpmeter.storage import open_store

    db = store_url

    s = open_store(db)
    mine, other = make_keys(s, "mine"), make_keys(s, "other")
    s.close()
    c = start_collector(db, log=tmp_path / "collector.log")
    try:
        import httpx

        for key, server in ((mine.ingest, "visible"), (other.ingest, OTHER)):
            r = httpx.post(c.url + "/v1/events", json=[event(server=server, tool="search", user="u")],
                           headers={"Authorization": f"Bearer {key}"})
            assert r.json()["accepted"] == 1

        async def ask(key: str) -> str:
            params = StdioServerParameters(command=sys.executable, args=["-m", "mcpmeter", "mcp", "--url", c.url, "--api-key", key],
                                           env={**os.environ})
            with open(tmp_path / "mcp.log", "a") as log:
                async with stdio_client(params, errlog=log) as (read, write):
                    async with ClientSession(read, write) as session:
                        await session.initialize()
                        texts = []
                        for tool in ("usage_report", "top_tools", "tool_errors", "clients", "sessions"):
                            result = await session.call_tool(tool, {"period": "7d"})
                            texts.append(json.dumps([block.model_dump() for block in result.content]))
                        return "\n".join(texts)

        mine_says = anyio.run(ask, mine.read)
        assert "visible" in mine_says and OTHER not in mine_says
        assert OTHER in anyio.run(ask, other.read)  # the check above can fail
    finally:
        stop_collector(c)


def test_metrics_and_admin_of_one_project_never_list_another(two_projects):
    c, mine, other = two_projects
    r = c.get("/v1/admin/keys", headers={"Authorization": f"Bearer {mine.admin}"})
    assert {k["name"] for k in r.json()["keys"]} == {"mine-ingest", "mine-read", "mine-admin"}
    r = c.get("/v1/admin/projects", headers={"Authorization": f"Bearer {mine.admin}"})
    assert [p["name"] for p in r.json()["projects"]] == ["mine"]
    # an admin key of one project cannot revoke, rotate or erase in another
    assert c.delete("/v1/admin/keys/other-read", headers={"Authorization": f"Bearer {mine.admin}"}).status_code == 404
    assert c.post("/v1/admin/keys/other-read/rotate", headers={"Authorization": f"Bearer {mine.admin}"}).status_code == 404
    assert c.get("/v1/usage/summary", headers={"Authorization": f"Bearer {other.read}"}).status_code == 200
    r = c.delete("/v1/admin/users", params={"user": "u2"}, headers={"Authorization": f"Bearer {mine.admin}"})
    assert r.json()["deleted"]["events"] == 0
    assert c.get("/v1/usage/summary", params={"period": "7d"}, headers={"Authorization": f"Bearer {other.read}"}).json()["users"] == 1

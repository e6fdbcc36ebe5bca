"""`mcpmeter mcp --http` serves usage data only to whom it may (issue 12, item 10): real
`mcpmeter mcp` processes, the real MCP SDK client over streamable HTTP, a real collector.

Beyond loopback (``--host 0.0.0.0``, the documented example) every request needs a read key
of the project (checked against the store on each request), or, reading a collector, a key
the collector accepts (passed through, so the collector's projects apply). On loopback a
keyless caller must also have addressed a loopback name and not be another site's page."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import AsyncIterator, Iterator

import httpx
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from test_analytics_mcp_server import fill, mcp_http

from conftest import MCPMETER, make_keys
from foundation_helpers import event
from mcpmeter.storage import open_store

pytestmark = pytest.mark.anyio
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "probe", "version": "1"}}}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextlib.asynccontextmanager
async def session(url: str, headers: dict[str, str] | None = None) -> AsyncIterator[ClientSession]:
    async with httpx2.AsyncClient(headers=headers or {}) as http, streamable_http_client(url, http_client=http) as (read, write):
        async with ClientSession(read, write) as s:
            await s.initialize()
            yield s


async def report_of(url: str, headers: dict[str, str] | None = None) -> dict:
    async with session(url, headers) as s:
        r = await s.call_tool("usage_report", {"period": "7d"})
        assert not r.is_error, r.content
        return r.structured_content


@contextlib.contextmanager
def the_client_is_refused() -> Iterator[None]:
    """The MCP client reports a refused HTTP request as an error response, inside its task groups."""
    with pytest.raises(ExceptionGroup) as info:
        yield
    assert info.group_contains(MCPError, depth=None), info.value


def refused(url: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(url, json=INITIALIZE, headers={**MCP_HEADERS, **headers}, timeout=10)


@pytest.fixture
def project_store(tmp_path):
    """A store with 3 calls in `default` (secret error message included) and 1 in `other`; keys of both."""
    db = tmp_path / "mcp.db"
    store = open_store(str(db))
    fill(store, [event(server="weblab", tool="t", ok=False, error_type="E", error_message="the secret error text")
                 for _ in range(3)])
    fill(store, [event(server="other-server", tool="o")], project="other")
    keys, other = make_keys(store), make_keys(store, "other")
    store.close()
    return db, keys, other


async def test_beyond_loopback_every_request_needs_a_read_key_of_the_project(project_store):
    db, keys, other = project_store
    with mcp_http("--host", "0.0.0.0", "--db", str(db)) as url:
        for headers, status in [({}, 401), ({"Authorization": "Bearer mcpm_" + "x" * 32}, 401),
                                ({"Authorization": "Basic abc"}, 401), ({"X-API-Key": keys.ingest}, 403),
                                ({"Authorization": f"Bearer {other.read}"}, 403)]:
            r = refused(url, headers)
            assert r.status_code == status, (headers, r.status_code, r.text)
            assert "secret" not in r.text and r.json()["hint"]
            if status == 401:
                assert r.headers["www-authenticate"] == "Bearer"
        with the_client_is_refused():  # the real client, without a key: no session at all
            await report_of(url)
        for key in (keys.read, keys.admin):
            report = await report_of(url, {"Authorization": f"Bearer {key}"})
            assert report["calls"] == 3 and report["project"] == "default"
        async with session(url, {"Authorization": f"Bearer {keys.read}"}) as s:
            r = await s.call_tool("tool_errors", {"period": "7d"})
            assert "the secret error text" in json.dumps(r.structured_content)  # what the key protects
            store = open_store(str(db))
            assert store.revoke_key(store.project_by_name("default").id, "default-read") == 1
            store.close()
            with pytest.raises(MCPError):  # revoked: the very next request is refused
                await s.call_tool("tool_errors", {"period": "7d"})
        assert refused(url, {"Authorization": f"Bearer {keys.read}"}).status_code == 401


def test_it_refuses_to_listen_beyond_loopback_when_no_client_could_authenticate(tmp_path):
    db = tmp_path / "nokeys.db"
    store = open_store(str(db))
    fill(store, [event()])
    store.close()
    done = subprocess.run([*MCPMETER, "mcp", "--http", "--host", "0.0.0.0", "--port", "0", "--db", str(db)],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode != 0 and "MCP server on" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) <= 2 and "Traceback" not in done.stderr, done.stderr
    assert "no read key of project 'default'" in done.stderr and "mcpmeter keys create" in done.stderr


async def test_on_loopback_a_keyless_caller_must_name_this_machine(project_store):
    db, keys, _ = project_store
    with mcp_http("--db", str(db)) as url:
        port = url.split(":")[2].split("/")[0]
        assert (await report_of(url))["calls"] == 3  # the local case: no key
        assert (await report_of(url, {"Origin": "http://localhost:6274"}))["calls"] == 3  # the MCP Inspector's page
        for headers in ({"Host": f"evil.example:{port}"}, {"Host": "evil.example"}, {"Host": f"127.0.0.1.evil.example:{port}"},
                        {"Origin": "http://evil.example"}, {"Origin": "null"},
                        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"}):
            r = refused(url, headers)
            assert r.status_code in (401, 403, 421), (headers, r.status_code)
            assert "secret" not in r.text
        with the_client_is_refused():
            await report_of(url, {"Host": f"rebound.example:{port}"})
        assert (await report_of(url, {"Authorization": f"Bearer {keys.read}"}))["calls"] == 3


async def test_reading_a_collector_the_clients_key_is_passed_through(collector):
    store = open_store(str(collector.db))
    a, b = make_keys(store, "alpha"), make_keys(store, "beta")
    store.close()
    for key, server, n in ((a.ingest, "alpha-server", 2), (b.ingest, "beta-server", 1)):
        r = httpx.post(collector.url + "/v1/events", json=[event(server=server) for _ in range(n)],
                       headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
    with mcp_http("--host", "0.0.0.0", "--url", collector.url) as url:
        assert refused(url, {}).status_code == 401  # no key: nothing, not even the collector's local trust
        assert refused(url, {"Authorization": "Bearer mcpm_" + "y" * 32}).status_code == 401
        assert refused(url, {"Authorization": f"Bearer {a.ingest}"}).status_code == 403
        alpha = await report_of(url, {"Authorization": f"Bearer {a.read}"})
        beta = await report_of(url, {"Authorization": f"Bearer {b.read}"})
        assert (alpha["project"], alpha["calls"]) == ("alpha", 2) and (beta["project"], beta["calls"]) == ("beta", 1)
        assert "beta-server" not in json.dumps(alpha) and "alpha-server" not in json.dumps(beta)

"""`mcpmeter mcp`: a real MCP server process answers usage questions from known events.

Every figure is checked against a plain count over the events the test inserted, through
the real MCP SDK client: over stdio against a store, over stdio against a collector
process, and over streamable HTTP.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import ClientSession
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from conftest import MCPMETER, free_port, make_keys
from foundation_helpers import now_ms
from mcpmeter.analytics.periods import DAY_MS, iso
from mcpmeter.events import decode_batch
from mcpmeter.ingest import rows_for
from mcpmeter.mcp_server import CollectorSource, StoreSource, build_server
from mcpmeter.storage import open_store

pytestmark = pytest.mark.anyio

MIN_MS = 60_000
TOOLS = {"usage_report", "top_tools", "tool_errors", "usage_timeseries", "clients", "sessions"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ---- the known events and what they should add up to ----------------------------------------


def call(ts: int, tool: str, user: str, client: str, ms: float, server: str = "weblab", session: str | None = None,
         error: str | None = None, message: str | None = None) -> dict[str, Any]:
    event = {"id": f"e{ts}-{tool}-{user}", "kind": "tool_call", "ts": ts, "server": server, "tool": tool, "user": user,
             "client_name": client, "duration_ms": ms, "ok": error is None, "session_id": session}
    if error:
        event |= {"error_type": error, "error_message": message}
    return {k: v for k, v in event.items() if v is not None}


def known_events(now: int) -> tuple[list[dict], list[dict], list[dict]]:
    """(this week's calls, the previous week's calls, other events). Ages are chosen so that
    each falls in its 7-day window whatever the time of day: 5 minutes and 3 days old are
    in the last 7 calendar days; 10 days old is in the 7 days before those."""
    recent, mid, old = now - 5 * MIN_MS, now - 3 * DAY_MS, now - 10 * DAY_MS
    this_week = [
        call(recent, "search", "u1", "cursor", 10, session="s1"),
        call(recent + 1000, "search", "u2", "claude-code", 20, session="s2"),
        call(recent + 2000, "search", "u1", "cursor", 30, session="s1", error="TimeoutError", message="upstream timed out after 30 s"),
        call(mid, "details", "u3", "cursor", 40, session="s3"),
        call(mid + 1000, "details", "u3", "cursor", 40, session="s3"),
        call(recent + 3000, "now", "u1", "claude-code", 1, server="time", session="s4"),
        call(mid + 2000, "search", "u4", "cursor", 15, session="s5", error="PermissionError", message="u4 may not search"),
    ]
    previous_week = [
        call(old, "search", "u1", "cursor", 10, session="s6"),
        call(old + 1000, "old_tool", "u5", "cursor", 10, session="s6"),
    ]
    other = [
        {"id": "init-s1", "kind": "initialize", "ts": recent - 1000, "server": "weblab", "session_id": "s1",
         "client_name": "cursor", "client_version": "1.7.2", "protocol_version": "2025-11-25"},
        {"id": "list-s1", "kind": "list_tools", "ts": recent - 800, "server": "weblab", "session_id": "s1"},
        {"id": "listed-export", "kind": "tool_listed", "ts": recent, "server": "weblab", "tool": "export"},
    ]
    return this_week, previous_week, other


def fill(store, events: list[dict], project: str = "default") -> None:
    """Store events the way the collector does: decode, validate, hash users, ingest."""
    decoded, rejected = decode_batch(json.dumps(events).encode())
    assert not rejected
    p = store.ensure_project(project)
    [result] = store.ingest([(p.id, rows_for(p, decoded))])
    assert result.accepted == len(events)


def per_tool(calls: list[dict]) -> list[tuple[str, str, int, int, int]]:
    """(server, tool, calls, errors, users), most called first, as the tools are ranked."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for e in calls:
        groups.setdefault((e["server"], e["tool"]), []).append(e)
    rows = [(s, t, len(es), sum(not e["ok"] for e in es), len({e["user"] for e in es})) for (s, t), es in groups.items()]
    return sorted(rows, key=lambda r: (-r[2], r[0], r[1]))


@pytest.fixture
def known(tmp_path: Path):
    """A store holding the known events: (db path, this week's calls, previous week's calls, other events)."""
    week, previous, other = known_events(now_ms())
    db = tmp_path / "known.db"
    store = open_store(str(db))
    fill(store, week + previous + other)
    store.close()
    return db, week, previous, other


def check_report(r: dict[str, Any], week: list[dict], previous: list[dict]) -> None:
    users = {e["user"] for e in week}
    seen_before = {e["user"] for e in previous}
    assert (r["calls"], r["errors"], r["users"]) == (len(week), sum(not e["ok"] for e in week), len(users))
    assert (r["new_users"], r["returning_users"]) == (len(users - seen_before), len(users & seen_before))
    assert r["success_rate"] == pytest.approx(sum(e["ok"] for e in week) / len(week), abs=1e-4)
    assert [(t["server"], t["tool"], t["calls"], t["errors"], t["users"]) for t in r["tools"]] == per_tool(week)
    assert r["previous"]["calls"] == len(previous)
    assert r["change"]["calls"] == pytest.approx((len(week) - len(previous)) / len(previous), abs=1e-4)


# ---- over stdio, against a store ---------------------------------------------------------------


def stdio_params(*args: str, env: dict[str, str] | None = None) -> StdioServerParameters:
    # A spawned server inherits only a few safe variables: pass ours explicitly.
    return StdioServerParameters(command=MCPMETER[0], args=[*MCPMETER[1:], "mcp", *args],
                                 env={"MCPMETER_HOME": os.environ["MCPMETER_HOME"], **(env or {})})


async def test_over_stdio_every_tool_answers_with_the_numbers_of_the_store(known, tmp_path):
    db, week, previous, other = known
    with open(tmp_path / "mcp.log", "w") as log:
        async with stdio_client(stdio_params("--db", str(db)), errlog=log) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                listed = {t.name: t for t in (await session.list_tools()).tools}
                assert set(listed) == TOOLS
                period = listed["top_tools"].input_schema["properties"]["period"]
                assert period["default"] == "7d" and "30d" in period["examples"] and period["description"]
                assert all(t.annotations.read_only_hint for t in listed.values())

                # The headline answers and a Markdown report.
                r = await session.call_tool("usage_report", {"period": "7d"})
                assert not r.is_error, r.content
                report = r.structured_content
                check_report(report, week, previous)
                assert report["project"] == "default"
                assert next(h["question"] for h in report["headline"]) == "How many people use it?"
                md = r.content[0].text
                assert md.startswith("# MCP usage report") and "| `search` | weblab | 4 |" in md
                assert {(t["server"], t["tool"]) for t in report["never_called"]} == {("weblab", "export"), ("weblab", "old_tool")}

                # Top tools, with a limit; latency of a tool whose every call took 40 ms.
                r = await session.call_tool("top_tools", {"period": "7d", "limit": 2})
                tools = r.structured_content
                assert [(t["server"], t["tool"], t["calls"], t["errors"], t["users"]) for t in tools["tools"]] == per_tool(week)[:2]
                assert tools["tools_total"] == len(per_tool(week)) and tools["calls"] == len(week)
                details = tools["tools"][1]["latency_ms"]
                assert (details["min"], details["max"]) == (40, 40) and details["p50"] == pytest.approx(40, rel=0.023)
                assert "…and 1 more tool(s)" in r.content[0].text

                # Errors: counted by type, the latest with their messages.
                r = await session.call_tool("tool_errors", {"period": "7d", "server": "weblab"})
                errors = r.structured_content
                failed = [e for e in week if not e["ok"]]
                assert errors["errors"] == len(failed)
                assert Counter({(t["tool"], t["error_type"]): t["count"] for t in errors["types"]}) == Counter(
                    (e["tool"], e["error_type"]) for e in failed)
                assert [x["error_message"] for x in errors["recent"]] == [
                    e["error_message"] for e in sorted(failed, key=lambda e: -e["ts"])]
                assert "upstream timed out after 30 s" in r.content[0].text

                # Per day: every day of the window, each event in its UTC day.
                r = await session.call_tool("usage_timeseries", {"period": "7d", "granularity": "day"})
                points = r.structured_content["points"]
                assert len(points) == 7 and r.structured_content["grain"] == "day"
                by_day = Counter(iso(e["ts"] - e["ts"] % DAY_MS) for e in week)
                assert {p["t"]: p["calls"] for p in points if p["calls"]} == dict(by_day)

                r = await session.call_tool("clients", {"period": "7d"})
                clients = {c["client"]: (c["calls"], c["users"]) for c in r.structured_content["clients"]}
                assert clients == {name: (sum(e["client_name"] == name for e in week),
                                          len({e["user"] for e in week if e["client_name"] == name}))
                                   for name in {e["client_name"] for e in week}}

                r = await session.call_tool("sessions", {"period": "7d"})
                sessions = r.structured_content
                assert sessions["sessions"] == len({e["session_id"] for e in week})
                init, listing = (e["ts"] for e in other[:2])
                first_call = min(e["ts"] for e in week if e["session_id"] == "s1")
                assert sessions["handshake_ms"]["initialize_to_list_tools"]["p50"] == listing - init
                assert sessions["handshake_ms"]["list_tools_to_call_tool"]["p50"] == first_call - listing

                # Filters narrow every answer.
                r = await session.call_tool("usage_report", {"period": "30d", "server": "weblab", "client": "cursor"})
                only = [e for e in week + previous if e["server"] == "weblab" and e["client_name"] == "cursor"]
                assert r.structured_content["calls"] == len(only)

                # Mistakes are tool errors that say what to do; the server keeps answering.
                r = await session.call_tool("top_tools", {"period": "2 weeks"})
                assert r.is_error and "period '2 weeks' is not understood" in r.content[0].text and "7d" in r.content[0].text
                r = await session.call_tool("usage_report", {"server": "weblabb"})
                assert r.is_error and "unknown server 'weblabb'" in r.content[0].text and "time, weblab" in r.content[0].text
                r = await session.call_tool("tool_errors", {"server": "time", "tool": "search"})
                assert r.is_error and "unknown tool 'search' on server 'time'" in r.content[0].text and "now" in r.content[0].text
                r = await session.call_tool("usage_timeseries", {"period": "90d", "granularity": "hour"})
                assert r.is_error and "granularity=day" in r.content[0].text
                assert not (await session.call_tool("clients", {})).is_error

                # Resources: this week's summary and the tools list.
                resources = {str(x.uri) for x in (await session.list_resources()).resources}
                assert resources == {"mcpmeter://summary/7d", "mcpmeter://tools"}
                summary = json.loads((await session.read_resource("mcpmeter://summary/7d")).contents[0].text)
                assert (summary["calls"], summary["users"]) == (len(week), len({e["user"] for e in week}))
                month = json.loads((await session.read_resource("mcpmeter://summary/30d")).contents[0].text)
                assert month["calls"] == len(week) + len(previous)
                listed_tools = json.loads((await session.read_resource("mcpmeter://tools")).contents[0].text)
                assert [t["tool"] for t in listed_tools["tools"]] == [t for _, t, *_ in per_tool(week)]

                # The prompt asks for a stakeholder report built from the tools.
                prompts = {p.name: p for p in (await session.list_prompts()).prompts}
                assert set(prompts) == {"weekly_adoption_report"}
                prompt = await session.get_prompt("weekly_adoption_report", {"server": "weblab"})
                asked = prompt.messages[0].content.text
                assert "`usage_report(period=\"7d\", server=\"weblab\")`" in asked and "Recommended actions" in asked
    assert "Traceback" not in (tmp_path / "mcp.log").read_text()


# ---- over stdio, against a collector -----------------------------------------------------------


async def test_over_stdio_a_collector_gives_the_same_answers(collector, tmp_path):
    store = open_store(str(collector.db))
    keys = make_keys(store)
    store.close()
    week, previous, other = known_events(now_ms())
    r = httpx.post(collector.url + "/v1/events", json=week + previous + other, headers={"Authorization": f"Bearer {keys.ingest}"})
    assert r.json()["accepted"] == len(week + previous + other)

    params = stdio_params("--url", collector.url, env={"MCPMETER_API_KEY": keys.read})
    with open(tmp_path / "mcp.log", "w") as log:
        async with stdio_client(params, errlog=log) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                r = await session.call_tool("usage_report", {"period": "7d"})
                assert not r.is_error, r.content
                check_report(r.structured_content, week, previous)
                assert r.structured_content["project"] == "default"
                r = await session.call_tool("top_tools", {"period": "30d", "server": "weblab"})
                assert [(t["tool"], t["calls"]) for t in r.structured_content["tools"]] == [
                    (t, n) for s, t, n, *_ in per_tool(week + previous) if s == "weblab"]
                r = await session.call_tool("sessions", {"server": "nope"})
                assert r.is_error and "unknown server 'nope'" in r.content[0].text


async def test_a_collector_that_refuses_or_cannot_be_reached_gives_a_tool_error(collector):
    store = open_store(str(collector.db))
    keys = make_keys(store)
    store.close()
    async with Client(build_server(CollectorSource(collector.url, keys.ingest))) as c:
        r = await c.call_tool("usage_report", {})
        assert r.is_error and "lacks the `read` scope" in r.content[0].text and "Hint:" in r.content[0].text
    async with Client(build_server(CollectorSource(f"http://127.0.0.1:{free_port()}", keys.read, timeout=5))) as c:
        r = await c.call_tool("top_tools", {"period": "1d"})
        assert r.is_error and "cannot reach the collector" in r.content[0].text
        with pytest.raises(MCPError, match="cannot reach the collector"):
            await c.read_resource("mcpmeter://summary/7d")


# ---- in process: a store without data, another project -----------------------------------------


async def test_an_empty_store_or_a_missing_project_is_explained(tmp_path, known):
    empty = StoreSource(open_store(str(tmp_path / "empty.db"), upgrade=False))
    async with Client(build_server(empty)) as c:
        r = await c.call_tool("usage_report", {})
        assert r.is_error and "holds no mcpmeter data yet" in r.content[0].text and "mcpmeter demo" in r.content[0].text
    empty.close()
    db, *_ = known
    other = StoreSource(open_store(str(db), upgrade=False), project="team-b")
    async with Client(build_server(other)) as c:
        r = await c.call_tool("clients", {})
        assert r.is_error and "no project 'team-b'" in r.content[0].text and "default" in r.content[0].text
    other.close()


async def test_projects_are_kept_apart(tmp_path):
    week, _previous, _other = known_events(now_ms())
    store = open_store(str(tmp_path / "two.db"))
    fill(store, week, project="default")
    fill(store, week[:2], project="team-b")
    source = StoreSource(store, project="team-b")
    async with Client(build_server(source)) as c:
        r = await c.call_tool("usage_report", {})
        assert (r.structured_content["project"], r.structured_content["calls"]) == ("team-b", 2)
    source.close()


# ---- the command line ---------------------------------------------------------------------------


def test_the_command_refuses_contradictory_sources(tmp_path):
    done = subprocess.run([*MCPMETER, "mcp", "--db", str(tmp_path / "x.db"), "--url", "http://127.0.0.1:1"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and done.stdout == ""
    assert "error: give --db or --url, not both" in done.stderr and "hint:" in done.stderr


# ---- over streamable HTTP ------------------------------------------------------------------------


@contextlib.contextmanager
def mcp_http(*args: str) -> Iterator[str]:
    """`mcpmeter mcp --http --port 0 ARGS`; yields its /mcp URL (on 127.0.0.1) once it has announced
    it (the socket already listens). Nothing may be written to stdout, and no traceback to stderr."""
    proc = subprocess.Popen([*MCPMETER, "mcp", "--http", "--port", "0", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    url = None
    for line in proc.stderr:
        lines.append(line)
        if "MCP server on http://" in line:
            url = line.split(" on ", 1)[1].split(",", 1)[0]
            break
    assert url, f"the server did not start: {''.join(lines)}"
    drain = threading.Thread(target=lambda: lines.extend(proc.stderr or ()), daemon=True)
    drain.start()
    try:
        yield url.replace("://0.0.0.0:", "://127.0.0.1:")
    finally:
        proc.terminate()
        proc.wait(10)
        drain.join(10)
        assert proc.stdout.read() == "", "nothing may be written to stdout"
        proc.stdout.close()
        proc.stderr.close()
        assert "Traceback" not in "".join(lines), "".join(lines)


@pytest.fixture
def http_server(known):
    db, *_ = known
    with mcp_http("--db", str(db)) as url:
        yield url


async def test_over_streamable_http(http_server, known):
    _, week, previous, _ = known
    assert http_server.startswith("http://127.0.0.1:") and http_server.endswith("/mcp")
    async with streamable_http_client(http_server) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            assert {t.name for t in (await session.list_tools()).tools} == TOOLS
            r = await session.call_tool("usage_report", {"period": "7d"})
            check_report(r.structured_content, week, previous)
            r = await session.call_tool("usage_timeseries", {"period": "bad"})
            assert r.is_error and "not understood" in r.content[0].text

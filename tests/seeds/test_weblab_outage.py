"""The tool owner seed (000): three weblab users, one team collector, one outage.

Each user runs the owner's weblab MCP server (a real stdio subprocess, instrumented with
`@meter.tool("name", "category")` and `meter.add_usage_report_tool(..., "weblab_usage_report")`)
on their own machine (their own MCPMETER_HOME) and calls its tools with the real MCP client.
While the collector is down, one user's calls are spooled and that user still gets answers -
`mcpmeter report` and the report tool - labelled as this machine's undelivered data. When the
collector is back, the spool is delivered and every user's report tool shows all three users.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from conftest import MCPMETER, free_port, make_keys, start_collector, stop_collector
from mcpmeter.sdk.spool import spooled_batches
from mcpmeter.storage import open_store
from store_backends import store_location

pytestmark = pytest.mark.slow
WEBLAB = str(Path(__file__).with_name("weblab_server.py"))


def user_env(tmp_path: Path, user: str, url: str, keys) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPMETER_")}
    return {**env, "MCPMETER_HOME": str(tmp_path / user), "MCPMETER_URL": url, "MCPMETER_API_KEY": keys.ingest,
            "MCPMETER_READ_KEY": keys.read, "MCPMETER_USER": f"{user}@example.com",
            "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(Path(__file__).parent)) if p)}


def run_weblab(env: dict[str, str], calls: list[tuple[str, dict]], log: Path) -> list[str]:
    """One session with the user's weblab server: the calls in order, their text results."""

    async def session() -> list[str]:
        params = StdioServerParameters(command=sys.executable, args=[WEBLAB], env=env)
        with open(log, "a") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write):
                async with ClientSession(read, write) as s:
                    await s.initialize()
                    out = []
                    for tool, args in calls:
                        result = await s.call_tool(tool, args)
                        out.append("\n".join(getattr(block, "text", "") for block in result.content))
                    return out

    return anyio.run(session)


def summary(url: str, keys) -> dict:
    r = httpx.get(url + "/v1/usage/summary", params={"period": "7d", "server": "weblab"},
                  headers={"Authorization": f"Bearer {keys.read}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def wait_for(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_three_weblab_users_and_one_outage(tmp_path, backend):
    with store_location(backend, tmp_path) as db:
        store = open_store(db)
        keys = make_keys(store)
        store.close()
        port = free_port()
        c = start_collector(db, port=port, log=tmp_path / "collector.log")
        env = {u: user_env(tmp_path, u, c.url, keys) for u in ("alice", "bob", "carol")}
        log = tmp_path / "weblab.log"
        try:
            # 1. Everyone uses weblab while the collector is up.
            run_weblab(env["alice"], [("weblab_details", {"experiment": "e1"})] * 3
                       + [("weblab_allocations", {"experiment": "e1"})], log)
            run_weblab(env["bob"], [("weblab_details", {"experiment": "e2"})] * 2, log)
            run_weblab(env["carol"], [("weblab_allocations", {"experiment": "broken"})], log)
            up = wait_for(lambda: (s := summary(c.url, keys))["calls"] == 7 and s, "the first seven calls")
            assert up["users"] == 3 and up["errors"] == 1
            assert {t["tool"]: t["calls"] for t in up["tools"]} == {"weblab_details": 5, "weblab_allocations": 2}

            # 2. The collector goes down; carol keeps working: her calls wait in her spool.
            stop_collector(c)
            answers = run_weblab(env["carol"], [("weblab_details", {"experiment": "e3"})] * 4
                                 + [("weblab_usage_report", {"period": "7d"})], log)
            spool = tmp_path / "carol" / "spool.db"
            wait_for(lambda: sum(len(json.loads(b)) for b in spooled_batches(spool, c.url)) == 4, "carol's spooled calls")
            tool_says = answers[-1]
            assert "THIS MACHINE ONLY" in tool_says and "1 unique users" in tool_says
            assert "weblab_details: 4 calls (100%)" in tool_says and "4 calls wait in this machine's spool" in tool_says

            done = subprocess.run([*MCPMETER, "report", "--format", "json"], env=env["carol"], capture_output=True,
                                  text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            local = json.loads(done.stdout)
            assert local["source"]["kind"] == "local" and local["source"]["spooled_events"] == 4
            assert local["project"] == "this machine (undelivered)"
            assert local["calls"] == 4 and local["users"] == 1
            assert "THIS MACHINE'S data only" in done.stderr and "cannot reach the collector" in done.stderr
            table = subprocess.run([*MCPMETER, "report"], env=env["carol"], capture_output=True, text=True, timeout=60)
            assert table.returncode == 0 and "this machine (undelivered)" in table.stdout

            # 3. The collector is back (same address, same store): carol's next session delivers the spool.
            c = start_collector(db, port=port, log=tmp_path / "collector.log")
            run_weblab(env["carol"], [("weblab_details", {"experiment": "e4"})], log)
            back = wait_for(lambda: (s := summary(c.url, keys))["calls"] == 12 and s, "the spooled calls delivered")
            assert back["users"] == 3
            assert not list(spooled_batches(spool, c.url))
            team = run_weblab(env["alice"], [("weblab_usage_report", {"period": "7d"})], log)[0]
            assert "3 unique users" in team and "from the team collector" in team
            assert "weblab_details: 10 calls (83%)" in team and "91.7% success rate over 12 calls" in team
        finally:
            stop_collector(c)

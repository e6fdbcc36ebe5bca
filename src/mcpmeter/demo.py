"""Demo data from real MCP traffic: real servers, real clients, the real capture paths.

``fill()`` plans ``days`` of conversations (several clients and versions, both protocol
generations, users that grow in number, a deploy that fixes a failing tool), then has the
MCP SDK's ``Client`` hold every one of them with real ``MCPServer``s
(``mcpmeter.demo_servers``), each server measured a different way:

- ``weblab``: ``meter.instrument(server)`` in this process, the user of each conversation
  given by ``instrument(user=...)``: input rounds, a task tool, cancelled calls, unknown tools.
- ``archon``: ``mcpmeter proxy --upstream`` in front of the server over streamable HTTP,
  users from a request header.
- ``time``: ``mcpmeter proxy -- python -m mcpmeter.demo_servers time stdio``, one proxy
  process per conversation (``MCPMETER_USER`` per process).
- ``kb``: ``@meter.tool(category=...)`` on the server's tools (the only path that knows
  categories), and ``meter.record(kind="installation")`` for each user's first conversation.

Every capture path writes into a scratch store of its own (the SDK's and the proxy's local
store). Then **re-timing**: real capture happens now, so each conversation is moved, whole,
to the time the plan gave it — every event of it shifted by the same amount (its offsets,
durations, sizes, outcomes, clients, users and ids stay what the capture recorded). The
catalog (``tool_listed``) is kept per server and day by the capture paths, so it is given to
each day a re-timed conversation listed the tools, with the id the capture would have given
it that day (``protocol.catalog_event_id``). The re-timed events go through the same decoding,
user hashing and ingest as a collector's. Custom measurements and server events are sent in
the ``POST /v1/measurements`` and ``/v1/server-events`` format through the same parsing; the
``rag.retrieval_ms`` timer is the captured ``rag_query`` durations. The plan is the same for
the same seed; the figures are the capture's.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from bisect import bisect_right
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import msgspec

from .events import Limits, decode_batch
from .exceptions import MCPMeterError, MissingExtra
from .ingest import rows_for
from .measurements import measurement_rows, server_event_rows
from .protocol import DEFINITION_HASH_ATTRIBUTE, LIST_TOOLS, TOOL_CALL, TOOL_LISTED, catalog_event_id
from .push import wire_event
from .storage.base import Store

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
# (name, version, protocol mode of the MCP SDK client, weight): "auto" speaks 2026-07-28, "legacy" initialize
CLIENTS = [("claude-code", "2.1.0", "auto", 0.25), ("claude-code", "2.0.14", "legacy", 0.2),
           ("cursor", "1.7.2", "legacy", 0.25), ("vscode-copilot", "1.105.1", "auto", 0.1),
           ("vscode-copilot", "1.104.0", "legacy", 0.08), ("mcp-inspector", "0.17.0", "auto", 0.12)]
SERVERS = {"weblab": 0.54, "archon": 0.18, "kb": 0.2, "time": 0.08}
CRAWLER = ("mcp-crawler", "0.9.0")  # lists the tools of every server it finds, calls none
STDIO_SESSIONS = 3  # each costs two processes: the history gets at most this many conversations with `time`
REQUIRES = (("mcp", "mcp"), ("uvicorn", "server"), ("starlette", "server"), ("httpx", "server"))
Progress = Callable[[str, int, int], None]

_QUIET_LOGGERS = ("mcp", "httpx", "httpx2", "httpcore")


@dataclass
class Conversation:
    server: str
    start_ms: int  # when the plan puts it
    client: tuple[str, str]
    mode: str
    user: str | None  # None: a crawler, nobody in particular
    calls: list[Any]  # demo_servers.clients.Call
    version: str | None = None  # weblab's, before or after the deploy
    first: bool = False  # the user's first conversation with this server
    window: tuple[int, int] = (0, 0)  # when it was captured (epoch ms)
    seen: list[tuple[str, str]] = field(default_factory=list)  # what the client saw


def require(what: str = "`mcpmeter demo`") -> None:
    """The demo drives real MCP servers (mcp) behind the HTTP proxy (server): name the extra
    that is missing in one line."""
    for module, extra in REQUIRES:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise MissingExtra(what, extra)


# ---- the plan ------------------------------------------------------------------------------


def _call(server: str, rng: random.Random, top_k: int) -> Any:
    from .demo_servers.clients import Call

    r = rng.random()
    table: dict[str, dict[str, Any]]  # arguments for each tool the choice may fall on
    if server == "weblab":
        exp = str(rng.randrange(10_000, 99_999))
        tool = rng.choices(["weblab_details", "weblab_allocations", "weblab_user_experiments", "weblab_search",
                            "approve_rollout", "rebuild_index", "slow_report", "weblab_delete"],
                           [0.32, 0.2, 0.13, 0.2, 0.06, 0.04, 0.02, 0.03])[0]
        table = {
            "weblab_details": {"experiment_id": exp if r > 0.05 else f"exp-{exp}"},
            "weblab_allocations": {"experiment_id": exp},
            "weblab_user_experiments": {"alias": rng.choice(["ann", "bo", "cy"]) if r > 0.04 else "former-dee"},
            "weblab_search": {"query": ("broad:" if r < 0.15 else "") + rng.choice(["checkout", "search ranking", "ads"])},
            "approve_rollout": {"experiment_id": exp, "percent": rng.choice([10, 25, 50, 100])},
            "rebuild_index": {"steps": rng.randint(2, 3), "outcome": "failed" if r < 0.3 else "completed"},
            "slow_report": {"seconds": 5},
            "weblab_delete": {"experiment_id": exp},
        }
        return Call(tool, table[tool], 0.05 if tool == "slow_report" else None)
    if server == "archon":
        tool = rng.choices(["rag_query", "create_task", "list_projects", "get_document", "delete_document", "search"],
                           [0.42, 0.14, 0.15, 0.2, 0.06, 0.03])[0]
        doc = f"doc-{rng.randrange(1, 40) if r > 0.08 else rng.randrange(100, 200)}"
        table = {"rag_query": {"query": rng.choice(["deploy steps", "on-call", "budget"]) if r > 0.03 else " ",
                                   "top_k": top_k},
                     "create_task": {"project": rng.choice(["atlas", "cygnus"]), "title": "" if r < 0.05 else "follow up"},
                     "list_projects": {}, "get_document": {"doc_id": doc},
                     "delete_document": {"doc_id": "doc-13" if r < 0.3 else doc}, "search": {"query": "budget"}}
        return Call(tool, table[tool])
    if server == "kb":
        tool = rng.choices(["search_articles", "get_article", "summarize", "send_feedback"], [0.4, 0.3, 0.2, 0.1])[0]
        article = f"kb-{rng.randrange(1, 30) if r > 0.06 else rng.randrange(100, 200)}"
        table = {"search_articles": {"query": "Article " + str(rng.randrange(1, 9))}, "get_article": {"article_id": article},
                     "summarize": {"article_id": article}, "send_feedback": {"article_id": article, "helpful": r > 0.3}}
        return Call(tool, table[tool])
    zones = ["Europe/Paris", "America/New_York", "Asia/Tokyo", "Etc/UTC"]
    zone = rng.choice(zones) if r > 0.08 else "Mars/Olympus_Mons"
    if rng.random() < 0.6:
        return Call("get_current_time", {"timezone": zone})
    return Call("convert_time", {"source_timezone": zone, "time": f"{rng.randrange(24):02d}:30", "target_timezone": rng.choice(zones)})


def _showcase(now_ms: int, version: str) -> list[Conversation]:
    """The last half hour: one conversation of each kind, so that every figure has something to
    show in any window, whatever the random history drew; and an incident that fires an alert."""
    from .demo_servers.clients import Call

    def at(minutes: float) -> int:
        return now_ms - int(minutes * 60_000)

    weblab_calls = [Call("weblab_details", {"experiment_id": "41200"}), Call("weblab_search", {"query": "checkout"}),
                    Call("approve_rollout", {"experiment_id": "41200", "percent": 25}),
                    Call("approve_rollout", {"experiment_id": "41200", "percent": 100}),
                    Call("rebuild_index", {"steps": 3, "outcome": "completed"}),
                    Call("rebuild_index", {"steps": 2, "outcome": "failed"}),
                    Call("weblab_details", {"experiment_id": "exp-7"}), Call("weblab_delete", {"experiment_id": "1"}),
                    Call("slow_report", {"seconds": 5}, 0.05), Call("weblab_allocations", {"experiment_id": "41200"})]
    archon_calls = [Call("list_projects", {}), Call("rag_query", {"query": "deploy steps", "top_k": 8}),
                    Call("delete_document", {"doc_id": "doc-2"}), Call("delete_document", {"doc_id": "doc-13"}),
                    Call("rag_query", {"query": " ", "top_k": 8}), Call("search", {"query": "budget"}),
                    Call("get_document", {"doc_id": "doc-404"})]
    kb_calls = [Call("search_articles", {"query": "Article 3"}), Call("get_article", {"article_id": "kb-3"}),
                Call("get_article", {"article_id": "kb-999"}), Call("send_feedback", {"article_id": "kb-3", "helpful": True})]
    time_calls = [Call("get_current_time", {"timezone": "Europe/Paris"}),
                  Call("convert_time", {"source_timezone": "Etc/UTC", "time": "09:30", "target_timezone": "Asia/Tokyo"}),
                  Call("get_current_time", {"timezone": "Mars/Olympus_Mons"})]
    return [
        Conversation("weblab", at(28), ("claude-code", "2.1.0"), "auto", "ann@example.com", weblab_calls, version),
        Conversation("weblab", at(21), ("cursor", "1.7.2"), "legacy", "bo@example.com", weblab_calls[:4], version),
        Conversation("archon", at(17), ("mcp-inspector", "0.17.0"), "auto", "ann@example.com", archon_calls),
        Conversation("archon", at(12), ("cursor", "1.7.2"), "legacy", "cy@example.com", archon_calls[:4]),
        # an incident: the documents archon is asked for have gone (its error budget burns: the alerts banner)
        Conversation("archon", at(10), ("claude-code", "2.1.0"), "auto", "bo@example.com",
                     [Call("get_document", {"doc_id": f"doc-{400 + n}"}) for n in range(12)]),
        Conversation("kb", at(9), ("vscode-copilot", "1.105.1"), "auto", "bo@example.com", kb_calls),
        Conversation("time", at(6), ("claude-code", "2.1.0"), "auto", "cy@example.com", time_calls),
        Conversation("time", at(3), ("claude-code", "2.0.14"), "legacy", "ann@example.com", time_calls[:2]),
        Conversation("weblab", at(25), CRAWLER, "auto", None, [], version),
        Conversation("archon", at(15), CRAWLER, "legacy", None, []),
    ]


def plan(days: int = 90, users: int = 40, calls_per_day: int = 60, seed: int = 7,
         now_ms: int | None = None) -> list[Conversation]:
    """The conversations to hold and when they happened: the same for the same arguments
    (and ``now_ms``). Adoption grows over the period, weekends are quieter; now and then a crawler lists
    the tools and calls none."""
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    people = [f"user{i:03d}@example.com" for i in range(users)]
    deploy_ms = now_ms - (days // 3) * DAY_MS
    config_ms = now_ms - (days // 2) * DAY_MS
    out: list[Conversation] = []
    stdio = 2  # the showcase's
    for day in range(days, 0, -1):
        growth = 0.4 + 0.6 * (days - day) / days
        day_start = now_ms - day * DAY_MS
        weekday = ((day_start // DAY_MS) + 3) % 7 < 5  # 1970-01-01 was a Thursday
        budget = int(calls_per_day * growth * (1.0 if weekday else 0.35))
        active = people[: max(3, int(users * growth))]
        while budget > 0:
            start = day_start + int(rng.random() * (DAY_MS - HOUR_MS))
            server = rng.choices(list(SERVERS), list(SERVERS.values()))[0]
            if server == "time":
                stdio += 1
                server = "time" if stdio <= STDIO_SESSIONS else "weblab"
            name, version, mode, _ = rng.choices(CLIENTS, [c[3] for c in CLIENTS])[0]
            n = min(budget, rng.randint(1, 8))
            budget -= n
            calls = [_call(server, rng, 8 if start > config_ms else 5) for _ in range(n)]
            if mode == "legacy":  # tasks are for clients that opted in to the extension (2026-07-28 ones here)
                calls = [c._replace(tool="weblab_allocations", arguments={"experiment_id": "41200"})
                         if c.tool == "rebuild_index" else c for c in calls]
            weblab_version = ("1.3.2" if start < deploy_ms else "1.4.0") if server == "weblab" else None
            out.append(Conversation(server, start, (name, version), mode, rng.choice(active), calls, weblab_version))
        if rng.random() < 0.4:  # a crawler lists the tools and calls none (the activation funnel's probes)
            server = rng.choice(["weblab", "archon"])
            start = day_start + int(rng.random() * (DAY_MS - HOUR_MS))
            out.append(Conversation(server, start, CRAWLER, rng.choice(["auto", "legacy"]), None, [],
                                    ("1.3.2" if start < deploy_ms else "1.4.0") if server == "weblab" else None))
    out += _showcase(now_ms, "1.4.0")
    out.sort(key=lambda c: c.start_ms)
    seen: set[tuple[str, str | None]] = set()
    for c in out:
        c.first = (c.server, c.user) not in seen
        seen.add((c.server, c.user))
    return out


def server_events(days: int, now_ms: int) -> list[dict[str, Any]]:
    """The deploy that fixed weblab_search (the plan switches weblab's version there), the RAG
    change (archon's calls ask for 8 passages from then on), and a restart in the last hour."""
    deploy = now_ms - (days // 3) * DAY_MS
    ci = {"by": "ci", "pipeline": "release"}
    return [
        {"server": "weblab", "type": "deploy", "ts": deploy, "version": "1.4.0", "message": "fix weblab_search timeouts",
         "attributes": ci},
        {"server": "weblab", "type": "restart", "ts": deploy + 120_000, "version": "1.4.0", "message": "after the deploy",
         "attributes": ci},
        {"server": "archon", "type": "config_change", "ts": now_ms - (days // 2) * DAY_MS, "version": "0.2.0",
         "message": "raised RAG top_k to 8", "attributes": {"by": "ops", "setting": "top_k"}},
        {"server": "time", "type": "deploy", "ts": now_ms - (days // 5) * DAY_MS - 3 * HOUR_MS, "version": "2026.10.19",
         "message": "tzdata 2026b", "attributes": ci},
        {"server": "kb", "type": "restart", "ts": now_ms - 35 * 60_000, "version": "1.0.0", "message": "nightly restart",
         "attributes": {"by": "cron"}},
    ]


# ---- capture ---------------------------------------------------------------------------------


_holding: ContextVar[str | None] = ContextVar("mcpmeter_demo_user", default=None)


def _now_ms() -> int:
    return int(time.time() * 1000)


class Capture:
    """Holds the planned conversations through the capture paths, into scratch stores."""

    def __init__(self, scratch: Path, progress: Progress | None) -> None:
        self.scratch = scratch
        self.progress = progress
        self.total = 0
        self.done = 0
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MCPMETER_")}
        self.env.update({"MCPMETER_HOME": str(scratch / "home"), "MCPMETER_FLUSH_INTERVAL": "0.2",
                         "PYTHONPATH": os.pathsep.join(p for p in [str(Path(__file__).resolve().parent.parent),
                                                                    os.environ.get("PYTHONPATH", "")] if p)})
        self.lanes: dict[str, list[Conversation]] = {}  # scratch db -> its conversations, held one after another

    def tick(self, conversation: Conversation) -> None:
        self.done += len(conversation.calls)
        if self.progress:
            self.progress("capturing", self.done, self.total)

    async def hold(self, conversation: Conversation, target: Any, db: str,
                   before: Callable[[], None] | None = None) -> None:
        from .demo_servers.clients import converse

        start = _now_ms()
        if before is not None:
            before()
        conversation.seen = await converse(target, conversation.mode, conversation.client, conversation.calls,
                                           tasks=conversation.mode == "auto")
        conversation.window = (start, _now_ms())
        self.lanes.setdefault(db, []).append(conversation)
        self.tick(conversation)
        await _next_ms()

    def meter(self, db: str, server: str, user: str | None) -> Any:
        from .sdk.meter import Meter

        return Meter(server=server, user=user, db=db, url="", disabled=False, hash_users=False, flush_interval=0.2)

    async def run(self, conversations: list[Conversation]) -> None:
        import anyio

        self.total = sum(len(c.calls) for c in conversations)
        by_server: dict[str, list[Conversation]] = {}
        for c in conversations:
            by_server.setdefault(c.server, []).append(c)
        # Quiet while the demo drives its servers: the servers' own lines about the demo's failing
        # tools, and one line per HTTP request of the MCP client (httpx / httpx2 at INFO).
        quiet = {name: logging.getLogger(name) for name in _QUIET_LOGGERS}
        levels = {name: log.level for name, log in quiet.items()}
        for log in quiet.values():
            log.setLevel(logging.CRITICAL)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.weblab, by_server.get("weblab", []))
                tg.start_soon(self.kb, by_server.get("kb", []))
                tg.start_soon(self.archon, by_server.get("archon", []))
                tg.start_soon(self.time, by_server.get("time", []))
        finally:
            for name, log in quiet.items():
                log.setLevel(levels[name])

    async def weblab(self, conversations: list[Conversation]) -> None:
        """``meter.instrument``, one server per version; who the user is, ``instrument(user=...)``
        answers (here: the user of the conversation being held)."""
        from .demo_servers import servers

        db = str(self.scratch / "weblab.db")
        for version in sorted({c.version or "" for c in conversations}):
            meter = self.meter(db, "weblab", None)
            try:
                server = meter.instrument(servers.weblab(version), user=lambda request_context: _holding.get())
                for c in conversations:
                    if c.version == version:
                        _holding.set(c.user)
                        await self.hold(c, server, db)
            finally:
                await _stop(meter)

    async def kb(self, conversations: list[Conversation]) -> None:
        """``@meter.tool(category=...)``, and ``meter.record`` for a user's first conversation."""
        from .demo_servers import servers

        db = str(self.scratch / "kb.db")
        groups: dict[str, list[Conversation]] = {}
        for c in conversations:
            groups.setdefault(c.user or "", []).append(c)
        for user, group in sorted(groups.items()):
            meter = self.meter(db, "kb", user)
            try:
                server = servers.kb(meter.tool)
                for c in group:
                    install = partial(meter.record, kind="installation", server_version="1.0.0",
                                      client_name=c.client[0], client_version=c.client[1])
                    await self.hold(c, server, db, install if c.first else None)
            finally:
                await _stop(meter)

    async def archon(self, conversations: list[Conversation]) -> None:
        """``mcpmeter proxy --upstream``: the server over streamable HTTP, users from a header."""
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        if not conversations:
            return
        db = str(self.scratch / "archon.db")
        upstream_port, proxy_port = _free_port(), _free_port()
        async with _process([sys.executable, "-m", "mcpmeter.demo_servers", "archon", "http", str(upstream_port)],
                            self.env, self.scratch / "archon.log", upstream_port), \
                   _process([sys.executable, "-m", "mcpmeter", "proxy", "--upstream", f"http://127.0.0.1:{upstream_port}/mcp",
                             "--listen", f"127.0.0.1:{proxy_port}", "--server-name", "archon",
                             "--user-from", "header:X-User-Id", "--db", db],
                            self.env, self.scratch / "archon-proxy.log", proxy_port):
            async with create_mcp_http_client() as http:  # one after another: the header is the current user's
                for c in conversations:
                    if c.user is None:
                        http.headers.pop("X-User-Id", None)
                    else:
                        http.headers["X-User-Id"] = c.user
                    await self.hold(c, streamable_http_client(f"http://127.0.0.1:{proxy_port}/mcp", http_client=http), db)

    async def time(self, conversations: list[Conversation]) -> None:
        """``mcpmeter proxy -- CMD``: one proxy process per conversation, as an MCP client starts it."""
        from mcp.client.stdio import StdioServerParameters, stdio_client

        for n, c in enumerate(conversations):
            db = str(self.scratch / f"time-{n}.db")
            params = StdioServerParameters(
                command=sys.executable, env={**self.env, "MCPMETER_USER": c.user or ""},
                args=["-m", "mcpmeter", "proxy", "--server-name", "time", "--db", db, "--",
                      sys.executable, "-m", "mcpmeter.demo_servers", "time", "stdio"])
            with open(self.scratch / f"time-{n}.log", "w") as errlog:  # the processes' stderr, not ours
                await self.hold(c, stdio_client(params, errlog=errlog), db)


async def _stop(meter: Any) -> None:
    """Deliver what the meter recorded and stop it, even when the capture is being cancelled."""
    import anyio

    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(meter.shutdown, 30.0)


async def _next_ms() -> None:
    """Conversations held one after another never share a millisecond (their windows are apart)."""
    import anyio

    await anyio.sleep(0.002)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def _process(argv: list[str], env: dict[str, str], log: Path, port: int) -> AsyncIterator[None]:
    """A server process, up once its port answers; stopped (SIGTERM: it flushes what it recorded) after."""
    import anyio

    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise MCPMeterError(f"demo: {' '.join(argv[2:4])} exited: {log.read_text(errors='replace')[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise MCPMeterError(f"demo: {' '.join(argv[2:4])} did not start") from None
                await anyio.sleep(0.05)
        yield
    finally:
        proc.terminate()
        with anyio.CancelScope(shield=True):
            try:
                await anyio.to_thread.run_sync(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ---- re-timing and storing -------------------------------------------------------------------


def captured(db: str) -> list[dict[str, Any]]:
    """What a capture path stored in its scratch store, as wire events (users already hashed)."""
    from .storage import open_store

    if not Path(db).exists():
        return []
    store = open_store(db)
    try:
        project = store.ensure_project("default")
        out, cursor = [], 0
        while rows := store.export_events(project.id, cursor, 5000):
            out += [wire_event(r[1:]) for r in rows]
            cursor = rows[-1][0]
        return out
    finally:
        store.close()


def retime(lanes: dict[str, list[Conversation]]) -> tuple[list[dict[str, Any]], int]:
    """Every captured event moved with its conversation to the planned time; the catalog given
    to each day a conversation listed the tools. Returns (events, events outside any conversation)."""
    out: list[dict[str, Any]] = []
    catalog: dict[str, dict[str, dict[str, Any]]] = {}
    listings: list[tuple[str, int]] = []
    lost = 0
    for db, conversations in lanes.items():
        conversations.sort(key=lambda c: c.window[0])
        starts = [c.window[0] for c in conversations]
        events = []
        for event in captured(db):
            if event["kind"] == TOOL_LISTED:
                catalog.setdefault(event["server"], {})[event["tool"]] = event
            else:
                events.append(event)
        events.sort(key=lambda e: e["ts"])
        # A lane holds its conversations one after another: an event belongs to the last one begun
        # before it, and every event of a session to the conversation of the session's first event
        # (a session's end can be written a moment after its client has gone).
        session_of: dict[str, int] = {}
        for event in events:
            i = bisect_right(starts, event["ts"]) - 1
            if event.get("session_id"):
                i = session_of.setdefault(event["session_id"], i)
            if i < 0:
                lost += 1
                continue
            c = conversations[i]
            event["ts"] += c.start_ms - c.window[0]
            out.append(event)
            if event["kind"] == LIST_TOOLS:
                listings.append((event["server"], event["ts"]))
    ids: set[str] = set()
    for server, ts in sorted(listings, key=lambda s: s[1]):
        for tool, listed in catalog.get(server, {}).items():
            digest = listed["attributes"][DEFINITION_HASH_ATTRIBUTE]
            event_id = catalog_event_id(server, tool, digest, ts // DAY_MS)
            if event_id not in ids:
                ids.add(event_id)
                out.append({**listed, "ts": ts, "id": event_id})
    out.sort(key=lambda e: e["ts"])
    return out, lost


def measurements(events: list[dict[str, Any]], days: int, now_ms: int, seed: int) -> list[dict[str, Any]]:
    """Custom measurements as a server sends them: archon's retrieval timer is the captured
    ``rag_query`` durations; weblab's cache gauge is reported every 6 hours, every hour in the last day."""
    rng = random.Random(seed)
    rag = [{"name": "rag.retrieval_ms", "type": "timer", "value": e["duration_ms"], "timestamp": e["ts"],
            "tags": {"index": "docs"}} for e in events
           if e["kind"] == TOOL_CALL and e["tool"] == "rag_query" and e.get("duration_ms") is not None]
    gauge = []
    for ts in range(now_ms - days * DAY_MS + HOUR_MS, now_ms, HOUR_MS):
        if ts > now_ms - DAY_MS or (now_ms - ts) % (6 * HOUR_MS) < HOUR_MS:
            age = (now_ms - ts) / DAY_MS
            gauge.append({"name": "cache.size_mb", "type": "gauge", "value": round(400 - 3 * age + rng.uniform(-8, 8), 1),
                          "timestamp": ts, "tags": {"region": "us-west-2"}})
    return [{"server": "archon", "metrics": rag}, {"server": "weblab", "metrics": gauge}]


def fill(store: Store, project_name: str = "default", progress: Progress | None = None, days: int = 90,
         now_ms: int | None = None, users: int = 40, calls_per_day: int = 60, seed: int = 7,
         ledger: list[tuple[str, str, str]] | None = None) -> int:
    """Hold the planned conversations through the capture paths and store what they recorded,
    re-timed; returns how many events were stored. ``ledger`` (a list) receives (server, tool,
    outcome class) of every call as its client saw it, to compare with what was stored."""
    import anyio

    require()
    now_ms = _now_ms() if now_ms is None else now_ms
    conversations = plan(days, users, calls_per_day, seed, now_ms)
    with tempfile.TemporaryDirectory(prefix="mcpmeter-demo-") as tmp:
        capture = Capture(Path(tmp), progress)
        anyio.run(capture.run, conversations)
        events, lost = retime(capture.lanes)
    if ledger is not None:
        ledger += [(c.server, tool, outcome) for c in conversations for tool, outcome in c.seen]
    if lost:
        raise MCPMeterError(f"demo: {lost} captured events belong to no conversation", hint="a clock step during the run?")
    if progress:
        progress("storing", 0, len(events))
    project = store.ensure_project(project_name)
    limits = Limits(max_events=100_000)
    encode = msgspec.json.Encoder().encode
    total = 0
    for n in range(0, len(events), 5000):
        batch, rejected = decode_batch(encode(events[n:n + 5000]), limits, now_ms)
        if rejected:
            raise MCPMeterError(f"demo: a captured event was refused: {rejected[0].error}")
        total += store.ingest([(project.id, rows_for(project, batch))])[0].accepted
        if progress:
            progress("storing", min(n + 5000, len(events)), len(events))
    for body in measurements(events, days, now_ms, seed):
        store.ingest_measurements(project.id, measurement_rows(json.dumps(body).encode(), limits, now_ms))
    store.ingest_server_events(project.id, server_event_rows(json.dumps(server_events(days, now_ms)).encode(), limits, now_ms))
    return total

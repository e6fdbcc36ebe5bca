"""GET /v1/live: accepted tool calls pushed to dashboards as Server-Sent Events, or over a WebSocket.

``Live.committed`` is a writer subscriber: the writer calls it from its thread after each
commit, with the rows that commit really inserted (duplicates left out), before any request
of the commit is answered. When their project has subscribers, the commit's cells (the rows
aggregated once, ``server.commits``; computed here, in the writer thread, if nobody did
yet) go to the event loop, which sends each subscriber one message per commit with the calls
that match its filters: counts per minute and tool (for counters and charts, summed from the
cells) and the newest calls (for the feed, taken from the rows). Each subscriber has
a small bounded queue; one that does not keep up loses messages (counted) and is told to
re-read the panels (``resync``), so a slow browser never holds the collector back. A comment
line every 15 s keeps proxies from closing an idle stream.

A stream lasts only as long as its credential. Before each message the stream reads the
store's keys version — once for all streams, and from a read that began after the message's
commit — and when it moved (a key or a grant was revoked, replaced or changed anywhere),
authenticates the request again; it does so every ``RECHECK_SECONDS`` anyway (a sign-out, an
expired key or session). A stream whose credential no longer reads its project gets a
``revoked`` event and is closed: a revocation committed before a commit means that commit's
calls are never sent on it.

The same path also takes a WebSocket handshake (``ws://…/v1/live``), for clients that expect
WebSockets: the same messages (``hello``, ``calls``, ``resync``, ``revoked``), each one text
frame ``{"event": …, "data": …}``; the same filters (``server``, ``tool``, ``client`` in the
query) and the same authentication and revocation (``Authorization``/``X-API-Key`` on the
handshake, or the dashboard's session cookie; a refused handshake is answered with the HTTP
error the SSE stream would get). A browser page of another origin cannot use a signed-in
browser's cookie: a cookie-authenticated handshake must come from the collector's own origin.
The server's WebSocket pings keep idle connections open; client frames are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from ...events import Row
from ...exceptions import AuthError, MCPMeterError, RateLimited
from ...protocol import CALLER_ERROR_TYPES, CANCELLED
from ..collector.auth import presented_key
from ..collector.responses import error
from ..commits import Cell, CellKey, Commit, ProjectBatch

if TYPE_CHECKING:
    from ..collector.app import Collector

HEARTBEAT_SECONDS = 15.0
RECHECK_SECONDS = 15.0  # a stream authenticates again at least this often
QUEUE_SIZE = 64
RECENT_PER_MESSAGE = 20
_CLOSE = object()


class Subscriber:
    __slots__ = ("client", "dropped", "lagged", "project_id", "queue", "server", "tool")

    def __init__(self, project_id: int, server: str | None, tool: str | None, client: str | None) -> None:
        self.project_id, self.server, self.tool, self.client = project_id, server, tool, client
        self.queue: asyncio.Queue = asyncio.Queue(QUEUE_SIZE)
        self.dropped = 0
        self.lagged = False

    @property
    def filters(self) -> tuple:
        return self.server, self.tool, self.client

    def matches(self, server: str, tool: str | None, client: str | None) -> bool:
        return ((self.server is None or server == self.server) and (self.tool is None or tool == self.tool)
                and (self.client is None or (client or "") == self.client))


class IngestRate:
    """Events accepted per project per second over the last minute (for the admin health panel)."""

    def __init__(self, seconds: int = 60) -> None:
        self.seconds = seconds
        self._buckets: dict[int, deque] = {}  # project -> deque[[second, accepted]]
        self.totals: dict[int, int] = {}  # project -> accepted since start
        self._lock = threading.Lock()

    def add(self, project_id: int, accepted: int) -> None:
        now = int(time.time())
        with self._lock:
            buckets = self._buckets.setdefault(project_id, deque())
            if buckets and buckets[-1][0] == now:
                buckets[-1][1] += accepted
            else:
                buckets.append([now, accepted])
            while buckets and buckets[0][0] <= now - self.seconds:
                buckets.popleft()
            self.totals[project_id] = self.totals.get(project_id, 0) + accepted

    def per_second(self, project_id: int) -> float:
        now = int(time.time())
        with self._lock:
            recent = sum(n for second, n in self._buckets.get(project_id, ()) if second > now - self.seconds)
        return round(recent / self.seconds, 2)


class Live:
    def __init__(self) -> None:
        self.rate = IngestRate()
        self.dropped = 0  # messages dropped for slow subscribers, all projects
        self._subs: dict[int, set[Subscriber]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._hooked = False
        self._version: int | None = None  # the store's keys version, read when ``_version_at`` (monotonic)
        self._version_at = float("-inf")
        self._version_lock: asyncio.Lock | None = None

    async def keys_version(self, store: Any, after: float) -> int:
        """The store's keys version from a read that began at ``after`` or later (one read shared by every stream)."""
        if self._version is not None and self._version_at >= after:
            return self._version
        if self._version_lock is None:
            self._version_lock = asyncio.Lock()
        async with self._version_lock:
            version = self._version
            if version is None or self._version_at < after:
                started = time.monotonic()
                version = self._version = int(await run_in_threadpool(store.keys_version))
                self._version_at = started
            return version

    # -- writer thread --------------------------------------------------------------

    def committed(self, commit: Commit) -> None:
        """A writer subscriber (its thread): count each project's new rows, hand them to its streams."""
        for project_id, batch in commit.projects.items():
            self.rate.add(project_id, len(batch.rows))
            if batch.rows and self._loop is not None and self._subs.get(project_id):
                batch.cells()  # aggregated in this thread (if no other subscriber did), never on the loop
                self._loop.call_soon_threadsafe(self._fanout, batch)

    # -- event loop -----------------------------------------------------------------

    def subscribers(self, project_id: int | None = None) -> int:
        if project_id is not None:
            return len(self._subs.get(project_id, ()))
        return sum(len(s) for s in self._subs.values())

    def subscribe(self, project_id: int, server: str | None, tool: str | None, client: str | None) -> Subscriber:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        sub = Subscriber(project_id, server, tool, client)
        self._subs.setdefault(project_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        subs = self._subs.get(sub.project_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.project_id]

    def close(self) -> None:
        """End every stream (the server is shutting down)."""
        self._closing = True
        for subs in list(self._subs.values()):
            for sub in list(subs):
                with contextlib.suppress(asyncio.QueueFull):
                    sub.queue.put_nowait(_CLOSE)

    def _fanout(self, batch: ProjectBatch) -> None:
        subs = self._subs.get(batch.project_id)
        if not subs:
            return
        cells = [(key, cell) for key, cell in batch.cells().items() if key[0] == "tool_call"]
        if not cells:
            return
        calls = [r for r in batch.rows if r.kind == "tool_call"]
        stamp = time.monotonic()  # after the commit: a keys version read from now on covers it
        messages: dict[tuple, dict | None] = {}
        for sub in list(subs):
            if sub.filters not in messages:
                messages[sub.filters] = _message(sub, cells, calls)
            message = messages[sub.filters]
            if message is not None:
                self._offer(sub, "calls", message, stamp)

    def _offer(self, sub: Subscriber, event: str, data: dict, stamp: float) -> None:
        if sub.lagged:
            event, data = "resync", {"reason": "slow subscriber", "dropped": sub.dropped}
        try:
            sub.queue.put_nowait((event, data, stamp))
            sub.lagged = False
        except asyncio.QueueFull:
            sub.dropped += 1
            sub.lagged = True
            self.dropped += 1


def _message(sub: Subscriber, cells: list[tuple[CellKey, Cell]], calls: list[Row]) -> dict[str, Any] | None:
    """What one subscriber's filters select of a commit's tool calls; None when nothing."""
    per_minute: dict[tuple, list[int]] = {}
    total = errors = 0
    for (_, server, tool, client, ok, error_type), cell in cells:
        if not sub.matches(server, tool, client):
            continue
        total += cell.events
        failed = ok == 0
        errors += cell.events if failed else 0
        # What the success rate leaves out (analytics.md): caller errors and cancelled calls, by name.
        caller = failed and error_type in CALLER_ERROR_TYPES
        cancelled = error_type == CANCELLED
        for minute, n in cell.minutes.items():
            counts = per_minute.setdefault((minute, server, tool or ""), [0, 0, 0, 0])
            counts[0] += n
            counts[1] += n if failed else 0
            counts[2] += n if caller else 0
            counts[3] += n if cancelled else 0
    if not total:
        return None
    newest = sorted((r for r in calls if sub.matches(r.server, r.tool, r.client_name)), key=_ts)[-RECENT_PER_MESSAGE:]
    return {
        "calls": total, "errors": errors,
        # [minute, server, tool, calls, errors, caller errors, cancelled]
        "counts": [[minute, server, tool, *counts] for (minute, server, tool), counts in per_minute.items()],
        "recent": [{"ts": r.ts, "server": r.server, "tool": r.tool, "client": r.client_name, "ok": r.ok != 0,
                    "duration_ms": r.duration_ms, "error_type": r.error_type,
                    "error_message": (r.error_message or "")[:300] or None, "session_id": r.session_id}
                   for r in reversed(newest)],
    }


def _ts(row: Row) -> int:
    return row.ts


def _end_streams_on_shutdown(live: Live) -> None:
    """Close the streams when the server is told to stop.

    uvicorn waits for open responses before it shuts down, and a stream never finishes by
    itself; so the first SIGINT/SIGTERM also ends the streams (browsers reconnect to the
    next collector by themselves). Chains to the handler the server installed.
    """
    if live._hooked or threading.current_thread() is not threading.main_thread():
        return
    live._hooked = True
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        if not callable(previous) or not getattr(previous, "__module__", "").startswith("uvicorn"):
            continue  # only chain to the server's own handler (it restores its predecessors on exit)

        def handler(signum, frame, previous=previous):
            with contextlib.suppress(RuntimeError):  # the loop may already be closed
                loop.call_soon_threadsafe(live.close)
            previous(signum, frame)

        signal.signal(sig, handler)


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Credential:
    """Whether the request that opened a stream may still read the stream's project."""

    def __init__(self, collector: Collector, request: Request, project_id: int, version: int) -> None:
        self.collector, self.request, self.project_id = collector, request, project_id
        self.version = version
        self.checked = time.monotonic()

    async def still_valid(self, after: float) -> bool:
        """Checked against a keys version read after ``after``; authenticates again when it moved,
        or when ``RECHECK_SECONDS`` have passed (sign-outs and expiry do not move it)."""
        version = await self.collector.live.keys_version(self.collector.store, after)
        if version == self.version and time.monotonic() - self.checked < RECHECK_SECONDS:
            return True
        try:
            principal = await run_in_threadpool(self.collector.auth.authenticate, self.request, "read")
        except RateLimited:
            return True  # limited, not refused: checked again at the next message
        except AuthError:
            return False
        self.version, self.checked = version, time.monotonic()
        return principal.project.id == self.project_id


REVOKED = {"reason": "the key or sign-in of this stream no longer reads this project"}


def _subscribe(live: Live, project_id: int, params: Any) -> Subscriber:
    return live.subscribe(project_id, params.get("server") or None, params.get("tool") or None, params.get("client") or None)


def _hello(project: str) -> dict[str, Any]:
    return {"project": project, "ts": int(time.time() * 1000)}


async def get_live(request: Request) -> Response:
    collector: Collector = request.app.state.collector
    version = await collector.live.keys_version(collector.store, time.monotonic())
    principal = collector.auth.authenticate(request, "read")
    live = collector.live
    _end_streams_on_shutdown(live)
    params = request.query_params
    credential = Credential(collector, request, principal.project.id, version)

    async def stream():
        sub = _subscribe(live, principal.project.id, params)
        try:
            yield b"retry: 2000\n\n" + _sse("hello", _hello(principal.project.name))
            while not live._closing:
                try:
                    item = await asyncio.wait_for(sub.queue.get(), HEARTBEAT_SECONDS)
                except TimeoutError:
                    item = None
                if item is _CLOSE:
                    return
                if not await credential.still_valid(item[2] if item else time.monotonic()):
                    yield _sse("revoked", REVOKED)
                    return
                yield _sse(item[0], item[1]) if item else b": heartbeat\n\n"
        finally:
            live.unsubscribe(sub)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


# ---- the WebSocket ---------------------------------------------------------------------------


def _frame(event: str, data: dict) -> str:
    return json.dumps({"event": event, "data": data}, separators=(",", ":"))


def _check_origin(request: Request) -> None:
    """A handshake authenticated by the session cookie must come from a page of this collector
    (browsers send cookies with cross-site WebSocket handshakes; no CORS check stops them)."""
    origin = request.headers.get("origin")
    if origin is None or presented_key(request) is not None:
        return
    host = request.headers.get("host", "")
    if origin.split("://", 1)[-1].rstrip("/").lower() != host.lower():
        raise AuthError(f"a WebSocket from {origin[:100]} may not use this collector's sign-in", status=403,
                        hint="open the live feed from the collector's own dashboard, or present an API key")


async def _refuse(websocket: WebSocket, exc: MCPMeterError) -> None:
    """Answer a refused handshake with the HTTP error the SSE stream would get (when the server can)."""
    if isinstance(exc, RateLimited):
        response = error(429, str(exc), exc.hint, {"Retry-After": str(exc.retry_after)})
    elif isinstance(exc, AuthError):
        response = error(exc.status, str(exc), exc.hint, {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None)
    else:
        response = error(400, str(exc), exc.hint)
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:
        await websocket.close(code=1008, reason=str(exc)[:120])


async def _until_closed(websocket: WebSocket) -> None:
    """Read (and ignore) what the client sends, until it goes away."""
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


async def ws_live(websocket: WebSocket) -> None:
    collector: Collector = websocket.app.state.collector
    handshake = Request({**websocket.scope, "type": "http", "method": "GET"})  # the handshake is a GET request
    live = collector.live
    try:
        version = await live.keys_version(collector.store, time.monotonic())
        _check_origin(handshake)
        principal = collector.auth.authenticate(handshake, "read")
    except MCPMeterError as exc:
        await _refuse(websocket, exc)
        return
    _end_streams_on_shutdown(live)
    credential = Credential(collector, handshake, principal.project.id, version)
    await websocket.accept()
    sub = _subscribe(live, principal.project.id, websocket.query_params)
    closed = asyncio.ensure_future(_until_closed(websocket))
    try:
        await websocket.send_text(_frame("hello", _hello(principal.project.name)))
        while not live._closing:
            got = asyncio.ensure_future(sub.queue.get())
            await asyncio.wait((got, closed), timeout=HEARTBEAT_SECONDS, return_when=asyncio.FIRST_COMPLETED)
            if closed.done():
                got.cancel()
                return
            item = got.result() if got.done() else None
            if item is None:
                got.cancel()
            if item is _CLOSE:
                await websocket.close(code=1001, reason="the collector is shutting down")
                return
            if not await credential.still_valid(item[2] if item else time.monotonic()):
                await websocket.send_text(_frame("revoked", REVOKED))
                await websocket.close(code=1008, reason="revoked")
                return
            if item:
                await websocket.send_text(_frame(item[0], item[1]))
    except (WebSocketDisconnect, RuntimeError):
        return  # the client went away while a message was being sent
    finally:
        live.unsubscribe(sub)
        closed.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
            await closed


routes = [Route("/v1/live", get_live, methods=["GET"]), WebSocketRoute("/v1/live", ws_live)]

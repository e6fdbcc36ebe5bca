"""``mcpmeter proxy --upstream URL --listen HOST:PORT``: a streamable-HTTP reverse proxy.

Every request is passed to the upstream server's origin with the same method, path,
query and headers (hop-by-hop headers dropped, ``Host`` set to the upstream's,
``X-Forwarded-*`` added), and the response comes back as it arrives: status, headers
and body bytes unchanged, an SSE stream chunk by chunk, never buffered. Compressed
bodies pass through compressed; the tracker reads a decompressed copy.

What is recorded comes from the JSON-RPC in the POST bodies and in the responses (a JSON
body, or the ``data:`` lines of an SSE stream), through the same ``Tracker`` as stdio.
Requests are matched within an ``Mcp-Session-Id`` session, or within their own POST
when there is none (2026-07-28 is sessionless). A request whose response never comes is
a failure: ``cancelled`` when the client closed the stream first (the 2026-07-28 HTTP
way to cancel), ``http_<status>`` when the upstream answered with an HTTP error,
``upstream_unavailable`` when it could not be reached, ``no_response`` otherwise.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import sys
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import anyio
import anyio.lowlevel

from ..exceptions import ConfigError
from ..jsondepth import check_depth
from .tracker import Connection, Tracker

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("mcpmeter.proxy")

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade",
})
MAX_SESSIONS = 10_000
MAX_TRACKED_BODY = 64 * 1024 * 1024  # a JSON body larger than this is passed through untracked

UserSource = Callable[[object], "str | None"]


# ---- configuration ------------------------------------------------------------------------


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--listen {value!r} is not HOST:PORT", hint="for example --listen 127.0.0.1:8891")
    return host.strip("[]") or "127.0.0.1", int(port)


def parse_user_source(value: str | None) -> UserSource | None:
    """``header:NAME`` or ``jwt:CLAIM`` as a function of the request headers; None: no user."""
    if not value:
        return None
    kind, sep, name = value.partition(":")
    kind = kind.strip().lower()
    name = name.strip()
    if sep and name and kind == "header":
        def from_header(headers) -> str | None:
            return headers.get(name) or None

        return from_header
    if sep and name and kind == "jwt":
        def from_jwt(headers) -> str | None:
            return jwt_claim(headers.get("authorization"), name)

        return from_jwt
    raise ConfigError(f"--user-from {value!r} is not understood",
                      hint="use header:X-User-Id (a request header) or jwt:sub (a claim of the bearer token)")


def jwt_claim(authorization: str | None, claim: str) -> str | None:
    """A claim of a bearer JWT's payload, decoded WITHOUT verifying the signature."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    parts = token.strip().split(".")
    if len(parts) != 3:
        return None
    try:
        decoded = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        check_depth(decoded, "the bearer token's payload")  # TooDeep is a ValueError: user unknown
        payload = json.loads(decoded)
    except (binascii.Error, ValueError):
        return None
    value = payload.get(claim) if isinstance(payload, dict) else None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    return str(value)[:512] or None


# ---- SSE ----------------------------------------------------------------------------------


class SseReader:
    """Incremental reader of ``text/event-stream``: yields each event's data (the ``data:`` lines)."""

    __slots__ = ("_buf", "_data", "_scan")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._data: list[bytes] = []
        self._scan = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf
        buf += chunk
        events: list[bytes] = []
        start = 0  # where the current line begins
        cr = buf.find(b"\r", self._scan)
        lf = buf.find(b"\n", self._scan)
        while cr >= 0 or lf >= 0:
            if cr >= 0 and (lf < 0 or cr < lf):
                if cr + 1 == len(buf):
                    break  # a CR at the end may be half of a CRLF: wait for more
                end, nxt = cr, cr + 2 if buf[cr + 1] == 0x0A else cr + 1
            else:
                end, nxt = lf, lf + 1
            self._line(bytes(buf[start:end]), events)
            start = nxt
            if 0 <= cr < nxt:
                cr = buf.find(b"\r", nxt)
            if 0 <= lf < nxt:
                lf = buf.find(b"\n", nxt)
        del buf[:start]
        # scan only new bytes next time (or from the CR that waited for its LF)
        self._scan = cr - start if cr >= 0 else len(buf)
        return events

    def close(self) -> list[bytes]:
        events: list[bytes] = []
        if self._buf:
            self._line(bytes(self._buf), events)
            self._buf.clear()
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[bytes]) -> None:
        if not line:
            if self._data:
                events.append(b"\n".join(self._data))
                self._data = []
        elif line.startswith(b"data:"):
            value = line[5:]
            self._data.append(value[1:] if value[:1] == b" " else value)


# ---- the proxy ----------------------------------------------------------------------------


class HttpProxy:
    """The reverse proxy as an ASGI application (``.app``), recording through ``tracker``."""

    def __init__(self, upstream: str, tracker: Tracker, user_source: UserSource | None = None,
                 client=None, shutdown_timeout: float = 5.0) -> None:
        import httpx
        from starlette.applications import Starlette
        from starlette.routing import Mount

        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"--upstream {upstream!r} is not an http(s) URL",
                              hint="for example --upstream http://127.0.0.1:8000/mcp")
        self.upstream = upstream
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.tracker = tracker
        self.user_source = user_source
        self.shutdown_timeout = shutdown_timeout
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(10.0, read=None, write=None, pool=None),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=100),
            follow_redirects=False, trust_env=False,
        )
        self._httpx = httpx
        self._sessions: OrderedDict[str, Connection] = OrderedDict()
        self._unseen: set[str] = set()  # sessions already running when we first saw them
        self.app = Starlette(routes=[Mount("/", app=self._asgi)], lifespan=self._lifespan)

    @asynccontextmanager
    async def _lifespan(self, app):
        try:
            yield
        finally:
            self.close()
            await self._client.aclose()

    def close(self) -> None:
        """Open sessions end, held events are released, the meter is flushed."""
        now = time.perf_counter()
        while self._sessions:
            _, conn = self._sessions.popitem(last=False)
            self.tracker.close(conn, "proxy_stopped", now)
        self.tracker.finish()
        self.tracker.meter.shutdown(self.shutdown_timeout)

    # ---- one request ------------------------------------------------------------------

    async def _asgi(self, scope, receive, send) -> None:
        from starlette.requests import ClientDisconnect, Request

        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        t0 = time.perf_counter()
        try:
            body = await request.body()
        except ClientDisconnect:
            return
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string") or b""
        url = self.origin + path.decode("latin-1") + (f"?{query.decode('latin-1')}" if query else "")
        upstream_request = self._client.build_request(request.method, url, headers=self._request_headers(request),
                                                      content=body or None)
        user = self.user_source(request.headers) if self.user_source else None
        sent_sid = request.headers.get("mcp-session-id")
        conn = self._connection(sent_sid, user, t0)
        if conn.protocol_version is None and conn.is_session:
            conn.protocol_version = (request.headers.get("mcp-protocol-version") or "")[:64] or None
        exchange = _Exchange(self, conn, upstream_request)
        tracked = body if request.method == "POST" else b""
        await exchange.run(receive, send, lambda: self.tracker.from_client(conn, _decoded(tracked, request.headers), t0, user=user))
        response = exchange.response
        if response is None or not sent_sid or sent_sid not in self._sessions:
            return
        if request.method == "DELETE" and response.status_code < 300:
            self._end_session(sent_sid, "session_closed", "client_closed")
        elif response.status_code == 404:
            if sent_sid in self._unseen:  # an id we never saw begin, and the server does not know it
                self._sessions.pop(sent_sid, None)
                self._unseen.discard(sent_sid)
            else:
                self._end_session(sent_sid, "session_expired", "session_expired")

    def _request_headers(self, request) -> list[tuple[bytes, bytes]]:
        drop = HOP_BY_HOP | {"host", "content-length"}
        connection = request.headers.get("connection")
        if connection:
            drop = drop | {h.strip().lower() for h in connection.split(",")}
        headers = [(k, v) for k, v in request.headers.raw if k.decode("latin-1").lower() not in drop]
        client = request.client
        forwarded_for = request.headers.get("x-forwarded-for")
        if client is not None:
            forwarded_for = f"{forwarded_for}, {client.host}" if forwarded_for else client.host
        if forwarded_for:
            headers = [(k, v) for k, v in headers if k.lower() != b"x-forwarded-for"]
            headers.append((b"x-forwarded-for", forwarded_for.encode("latin-1")))
        if "x-forwarded-proto" not in request.headers:
            headers.append((b"x-forwarded-proto", request.url.scheme.encode("latin-1")))
        host = request.headers.get("host")
        if host and "x-forwarded-host" not in request.headers:
            headers.append((b"x-forwarded-host", host.encode("latin-1")))
        return headers

    def _connection(self, sid: str | None, user: str | None, t: float) -> Connection:
        """The session's connection, or a fresh one for a request without a session id.

        A fresh connection becomes a session if the response hands out an id (``_adopt``).
        A session id we have not seen handed out is one that began before us: it gets no
        session_start.
        """
        if not sid:
            return Connection(None, user=user, is_session=False, started=t)
        conn = self._sessions.get(sid)
        if conn is not None:
            self._sessions.move_to_end(sid)
            return conn
        conn = Connection(sid[:200], user=user, started=t)
        conn.announced = True
        self._unseen.add(sid)
        self._register(sid, conn)
        return conn

    def _adopt(self, conn: Connection, response) -> None:
        """The response to a session-less request named a session: that request began it."""
        sid = response.headers.get("mcp-session-id")
        if sid and not conn.is_session and sid not in self._sessions:
            conn.session_id, conn.is_session = sid[:200], True
            conn.announced = response.status_code >= 400
            self._register(sid, conn)

    def _register(self, sid: str, conn: Connection) -> None:
        self._sessions[sid] = conn
        if len(self._sessions) > MAX_SESSIONS:
            old_sid, oldest = self._sessions.popitem(last=False)
            self._unseen.discard(old_sid)
            self.tracker.close(oldest, "session_evicted")

    def _end_session(self, sid: str, reason: str, end: str) -> None:
        self._unseen.discard(sid)
        conn = self._sessions.pop(sid, None)
        if conn is not None:
            self.tracker.close(conn, reason, attributes={"reason": end})


class _Exchange:
    """One request: forwarded upstream, its response streamed back, both fed to the tracker.

    A watcher listens for the client going away during the whole exchange (also while
    the upstream has not answered yet) and cancels it: the upstream request is closed
    too, as the client asked.
    """

    def __init__(self, proxy: HttpProxy, conn: Connection, upstream_request) -> None:
        self.proxy = proxy
        self.conn = conn
        self.upstream_request = upstream_request
        self.response: httpx.Response | None = None
        self.keys: list[tuple] = []
        self.disconnected = False
        self.failure: str | None = None

    async def run(self, receive, send, track_request) -> None:
        complete = False
        opened = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                if not complete:
                    self.disconnected = True
                tg.cancel_scope.cancel()

            async def open_upstream() -> None:
                try:
                    self.response = await self.proxy._client.send(self.upstream_request, stream=True)
                except self.proxy._httpx.HTTPError as exc:
                    log.warning("mcpmeter proxy: upstream %s unreachable: %s", self.proxy.origin, exc)
                    self.failure = f"{type(exc).__name__}: {exc}"[:1024]
                finally:
                    opened.set()

            tg.start_soon(watch)
            try:
                tg.start_soon(open_upstream)
                await anyio.lowlevel.checkpoint()  # let the request go out before we read it
                self.keys = self._track(track_request)
                await opened.wait()
                if self.response is None:
                    await _plain(send, 502, f"mcpmeter proxy: the upstream server {self.proxy.origin} is unreachable"
                                            f" ({self.failure})\n")
                    complete = True
                    return
                self.proxy._adopt(self.conn, self.response)
                await send({"type": "http.response.start", "status": self.response.status_code,
                            "headers": _response_headers(self.response)})
                await self._stream(send)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                complete = True
            except OSError:  # ASGI 2.4 servers raise this when the client has gone
                self.disconnected = True
            finally:
                with anyio.CancelScope(shield=True):
                    if self.response is not None:
                        await self.response.aclose()
                    self._finish()
                tg.cancel_scope.cancel()

    @staticmethod
    def _track(track_request) -> list[tuple]:
        try:
            return track_request()
        except Exception as exc:
            _tracking_failed(exc)
            return []

    async def _stream(self, send) -> None:
        response = self.response
        assert response is not None  # run() streams only an opened response
        tracker, conn = self.proxy.tracker, self.conn
        content_type = response.headers.get("content-type", "").lower()
        sse = SseReader() if content_type.startswith("text/event-stream") else None
        is_json = sse is None and "json" in content_type
        inflate = _inflater(response.headers.get("content-encoding"))
        body = bytearray()
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if inflate is False or not (sse or is_json):
                continue  # an encoding we cannot read, or not JSON-RPC: pass through only
            t = time.perf_counter()
            try:
                data = inflate.decompress(chunk) if inflate else chunk
                if sse is not None:
                    for event in sse.feed(data):
                        tracker.from_server(conn, event, t)
                elif len(body) + len(data) <= MAX_TRACKED_BODY:
                    body += data
                else:
                    is_json = False
                    body.clear()
            except Exception as exc:  # tracking never breaks the relay
                _tracking_failed(exc)
                inflate = False
        t = time.perf_counter()
        try:
            if sse is not None and inflate is not False:
                for event in sse.close():
                    tracker.from_server(conn, event, t)
            elif is_json and body and inflate is not False:
                tracker.from_server(conn, bytes(body), t)
        except Exception as exc:
            _tracking_failed(exc)

    def _finish(self) -> None:
        """Requests of this exchange that got no response in it."""
        conn = self.conn
        keys = [k for k in self.keys if k in conn.pending]
        if not keys:
            return
        status = self.response.status_code if self.response is not None else None
        message = None
        if self.disconnected:
            reason = "cancelled"
        elif status is None:
            reason, message = "upstream_unavailable", self.failure
        elif status >= 400:
            reason = f"http_{status}"
        elif not conn.is_session:
            reason = "no_response"
        else:
            return  # a session's answer may still come on a resumed stream; else it fails at session end
        self.proxy.tracker.abandon(conn, keys, reason, message=message)


def _response_headers(response) -> list[tuple[bytes, bytes]]:
    drop = set(HOP_BY_HOP)
    connection = response.headers.get("connection")
    if connection:
        drop |= {h.strip().lower() for h in connection.split(",")}
    return [(k.lower(), v) for k, v in response.headers.raw if k.decode("latin-1").lower() not in drop]


def _inflater(encoding: str | None):
    """None: identity; a decompressor for gzip/deflate; False: an encoding we do not read."""
    encoding = (encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
    return False


def _decoded(body: bytes, headers) -> bytes:
    inflate = _inflater(headers.get("content-encoding"))
    if inflate is None:
        return body
    if inflate is False:
        return b""
    try:
        return inflate.decompress(body, MAX_TRACKED_BODY)
    except zlib.error:
        return b""


def _tracking_failed(exc: BaseException) -> None:
    from ..sdk.internal import internal_error

    internal_error("the proxy could not track a response", exc)


async def _plain(send, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


# ---- running it ---------------------------------------------------------------------------


def serve(upstream: str, host: str, port: int, *, server_name: str | None, user_source: UserSource | None,
          url: str | None, api_key: str | None, db: str | None, log_level: str = "warning") -> None:
    import uvicorn

    from ..sdk.meter import Meter

    fallback = urlsplit(upstream).netloc or upstream
    meter = Meter(server=server_name or fallback, db=db, url=url, api_key=api_key, transport="streamable-http")
    meter.user = None  # an HTTP proxy serves many people: the user comes from each request, or is unknown
    tracker = Tracker(meter, transport="streamable-http", server=server_name, fallback_server=fallback)
    proxy = HttpProxy(upstream, tracker, user_source)
    path = urlsplit(upstream).path or "/"
    sys.stderr.write(f"mcpmeter proxy: http://{host}:{port}{path} -> {upstream} (server {server_name or 'from its handshake'})\n")
    uvicorn.run(proxy.app, host=host, port=port, log_level="warning" if log_level == "info" else log_level,
                access_log=False, lifespan="on", timeout_graceful_shutdown=3)

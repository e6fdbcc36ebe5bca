"""Shipping batches to a collector over HTTP(S) with the standard library only.

A persistent connection per worker; transient failures (connection errors, 408, 429,
502-504) are retried with jittered exponential backoff that honours Retry-After; the caller
spools what still could not be delivered. Any other 4xx is never retried. With a deadline,
the socket timeout of every attempt is cut to the time left, so a collector that accepts
connections but never answers cannot hold the sender past it; ``abort()`` (from another
thread) ends an attempt in progress at once.
"""

from __future__ import annotations

import gzip
import http.client
import json
import random
import socket
import threading
import time
from typing import NamedTuple
from urllib.parse import urlsplit

from .. import __version__
from ..exceptions import ConfigError
from ..signing import signature_headers

RETRY_STATUSES = {408, 429, 502, 503, 504}
HELD_STATUSES = {401, 403, 404}  # the key (or URL) is not accepted: keep the data, never send it under another key
SPOOL_STATUSES = HELD_STATUSES | {500}  # fixable on the collector side: keep the data
_MIN_TIMEOUT = 0.05


class Outcome(NamedTuple):
    delivered: bool
    spool: bool  # not delivered, but worth keeping for later
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    detail: str = ""
    status: int = 0  # the collector's last answer; 0: no answer (unreachable, timed out)


class HttpTransport:
    def __init__(self, url: str, api_key: str | None, timeout: float = 10.0, signing_secret: str | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"MCPMETER_URL={url!r} is not an http(s) URL", hint="e.g. http://127.0.0.1:8890")
        self.url = url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._path = parts.path.rstrip("/") + "/v1/events"
        self._timeout = timeout
        self._headers = {"Content-Type": "application/json", "Content-Encoding": "gzip",
                         "User-Agent": f"mcpmeter-python/{__version__}"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._conn: http.client.HTTPConnection | None = None
        self._aborted = threading.Event()
        self._signing_secret = signing_secret  # each attempt is signed anew: a fresh timestamp, never a replay

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self._timeout)
        return self._conn

    def abort(self) -> None:
        """End the attempt in progress (if any) now, and every later one (the process is exiting).

        Safe to call from another thread."""
        self._aborted.set()
        conn = self._conn
        sock = getattr(conn, "sock", None) if conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def post(self, body: bytes, deadline: float | None = None) -> tuple[int, dict[str, str], bytes]:
        """One attempt, over by ``deadline`` (monotonic). Raises OSError / HTTPException on transport failure."""
        if self._aborted.is_set():
            raise ConnectionAbortedError("the process is exiting")
        conn = self._connection()
        timeout = self._timeout
        if deadline is not None:
            timeout = min(timeout, max(deadline - time.monotonic(), _MIN_TIMEOUT))
        conn.timeout = timeout  # a new connection's connect() uses it...
        if conn.sock is not None:
            conn.sock.settimeout(timeout)  # ...and a kept-alive one's reads and writes
        try:
            headers = self._headers
            if self._signing_secret:
                headers = {**headers, **signature_headers(self._signing_secret, body)}
            conn.request("POST", self._path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def send(self, payload: bytes, attempts: int = 4, deadline: float | None = None, compressed: bool = False) -> Outcome:
        """Deliver one JSON batch, retrying transient failures until ``attempts`` or ``deadline``."""
        body = payload if compressed else gzip.compress(payload, compresslevel=5)
        delay = 0.25
        detail = ""
        status = 0
        for attempt in range(attempts):
            retry_after = None
            try:
                status, headers, data = self.post(body, deadline)
            except (OSError, http.client.HTTPException) as exc:
                status = 0
                detail = f"cannot reach {self.url}: {exc}"
            else:
                if 200 <= status < 300:
                    return _delivered(data)
                detail = f"{status}: {_error_text(data)}"
                if status in SPOOL_STATUSES:
                    return Outcome(False, True, detail=detail, status=status)
                if status not in RETRY_STATUSES:
                    return Outcome(False, False, rejected=_count_rejected(data), detail=detail, status=status)
                retry_after = _retry_after(headers.get("retry-after"))
            if attempt == attempts - 1:
                break
            wait = retry_after if retry_after is not None else delay * (0.5 + random.random())
            if deadline is not None and time.monotonic() + wait > deadline:
                break
            if self._aborted.wait(wait):
                break
            delay = min(delay * 2, 30.0)
        return Outcome(False, True, detail=detail, status=status)


def _delivered(data: bytes) -> Outcome:
    try:
        answer = json.loads(data)
        return Outcome(True, False, answer.get("accepted", 0), answer.get("duplicates", 0), len(answer.get("rejected", [])))
    except (ValueError, AttributeError):
        return Outcome(True, False)


def _count_rejected(data: bytes) -> int:
    try:
        return len(json.loads(data).get("rejected", [])) or 0
    except (ValueError, AttributeError):
        return 0


def _error_text(data: bytes) -> str:
    try:
        answer = json.loads(data)
        return " - ".join(str(answer[k]) for k in ("error", "hint") if answer.get(k))
    except (ValueError, AttributeError, TypeError):
        return data[:200].decode(errors="replace")


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return min(max(float(value), 0.0), 60.0)
    except ValueError:
        return None

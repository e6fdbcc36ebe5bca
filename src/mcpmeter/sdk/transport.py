"""Shipping batches to a collector over HTTP(S) with the standard library only.

A persistent connection per worker; transient failures (connection errors, 429, 502-504)
are retried with jittered exponential backoff that honours Retry-After; the caller spools
what still could not be delivered.
"""

from __future__ import annotations

import gzip
import http.client
import json
import random
import time
from typing import NamedTuple
from urllib.parse import urlsplit

from .. import __version__
from ..exceptions import ConfigError
from ..signing import signature_headers

RETRY_STATUSES = {429, 502, 503, 504}
SPOOL_STATUSES = {401, 403, 404, 500}  # fixable on the collector side: keep the data


class Outcome(NamedTuple):
    delivered: bool
    spool: bool  # not delivered, but worth keeping for later
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    detail: str = ""


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
        self._signing_secret = signing_secret  # each attempt is signed anew: a fresh timestamp, never a replay

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self._timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def post(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """One attempt. Raises OSError / HTTPException on transport failure."""
        conn = self._connection()
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
        for attempt in range(attempts):
            retry_after = None
            try:
                status, headers, data = self.post(body)
            except (OSError, http.client.HTTPException) as exc:
                detail = f"cannot reach {self.url}: {exc}"
            else:
                if 200 <= status < 300:
                    return _delivered(data)
                detail = f"{status}: {_error_text(data)}"
                if status in SPOOL_STATUSES:
                    return Outcome(False, True, detail=detail)
                if status not in RETRY_STATUSES:
                    return Outcome(False, False, rejected=_count_rejected(data), detail=detail)
                retry_after = _retry_after(headers.get("retry-after"))
            if attempt == attempts - 1:
                break
            wait = retry_after if retry_after is not None else delay * (0.5 + random.random())
            if deadline is not None and time.monotonic() + wait > deadline:
                break
            time.sleep(wait)
            delay = min(delay * 2, 30.0)
        return Outcome(False, True, detail=detail)


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

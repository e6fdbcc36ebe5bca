"""Signed submissions, rate limits and per-project name caps: the collector's defences.

Signatures. A key created with ``--require-signature`` has a secret (shown once). Every
ingest request made with it must carry ``X-MCPMeter-Timestamp`` (unix seconds) and
``X-MCPMeter-Signature: v1=<hex>``, the HMAC-SHA256 with that secret of
``timestamp + "." + body``, where body is the raw request body as sent (gzip bytes when it
is gzip-encoded). The timestamp must be within ``MCPMETER_SIGNATURE_TOLERANCE_SECONDS`` of
the collector's clock, and a signature is taken once per collector within that window, so
a captured request cannot be replayed later, and not even at once to the same collector.
(A replay to another collector within the window counts nothing twice either: events are
idempotent by id.)

Rate limits. A token bucket per API key and one per source address, each holding
``MCPMETER_RATE_LIMIT_PER_KEY`` / ``_PER_IP`` requests and refilled at that many per
minute; an empty bucket answers 429 with ``Retry-After`` (whole seconds until a token is
there). Buckets live in each collector process's memory. Loopback addresses (the machine
itself; behind a reverse proxy uvicorn takes the client's address from X-Forwarded-For)
are not limited per address, only per key.

Per project (the seed's "1000+ requests/min per organisation"): at most
``MCPMETER_RATE_LIMIT_PER_PROJECT`` requests made with a project's keys in each fixed
minute (UTC, from :00 to :59), whichever key and collector they reach; one more answers 429
with ``Retry-After`` (the seconds left in the minute). On PostgreSQL every collector counts
in the store's ``rate_windows`` table (one atomic upsert per request), so the limit holds for
all of them together; on SQLite (one collector owns the file) the count is in memory.
Requests that use no key (trusted loopback callers, people signed in with OpenID Connect)
are not counted.

Name caps. A project may have at most ``MCPMETER_MAX_SERVERS_PER_PROJECT`` distinct
servers and ``MCPMETER_MAX_TOOLS_PER_PROJECT`` distinct (server, tool) pairs, whatever
names them: an event (or OTLP span) that would add one more is rejected, with a reason, like
any invalid event; a measurement or server-event request that would is refused as a whole
(422). Servers named only by measurements and server events count too.
"""

from __future__ import annotations

import hmac
import math
import threading
import time
from collections.abc import Callable, Hashable, Mapping

from ...events import Event
from ...exceptions import SIGN_HINT, RateLimited, SignatureError
from ...keys import SECRET_PREFIX, new_signing_secret
from ...signing import sign, signature_headers
from ...storage.base import SecurityStore

# sign, signature_headers (signing.py), new_signing_secret (keys.py), SignatureError and RateLimited
# (exceptions.py) are re-exported: the collector's side of signatures and limits is read from here.
__all__ = [
    "SECRET_PREFIX",
    "SIGN_HINT",
    "NameCaps",
    "ProjectWindows",
    "RateLimited",
    "RateLimits",
    "SignatureChecker",
    "SignatureError",
    "new_signing_secret",
    "sign",
    "signature_headers",
]

TIMESTAMP_HEADER = "x-mcpmeter-timestamp"
SIGNATURE_HEADER = "x-mcpmeter-signature"


class SignatureChecker:
    """Verifies signatures; remembers the ones it took, until they are too old to be taken anyway."""

    def __init__(self, tolerance_seconds: int, max_remembered: int = 200_000) -> None:
        self.tolerance = tolerance_seconds
        self.max_remembered = max_remembered
        self._seen: dict[str, float] = {}  # signature -> when it stops being acceptable (time.time())
        self._lock = threading.Lock()
        self.checked = 0
        self.refused = 0

    def verify(self, secret: str, headers: Mapping[str, str], body: bytes, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.checked += 1
        try:
            self._verify(secret, headers, body, now)
        except SignatureError:
            self.refused += 1
            raise

    def _verify(self, secret: str, headers: Mapping[str, str], body: bytes, now: float) -> None:
        stamp, given = headers.get(TIMESTAMP_HEADER), headers.get(SIGNATURE_HEADER)
        if not stamp or not given:
            missing = [h for h, v in (("X-MCPMeter-Timestamp", stamp), ("X-MCPMeter-Signature", given)) if not v]
            raise SignatureError(f"this API key requires signed submissions; {' and '.join(missing)} missing")
        if not stamp.isdigit() or len(stamp) > 12:
            raise SignatureError("X-MCPMeter-Timestamp must be the time of sending in unix seconds (digits only)")
        skew = now - int(stamp)
        if abs(skew) > self.tolerance:
            when = "old" if skew > 0 else "in the future"
            raise SignatureError(
                f"the signature's timestamp is {abs(int(skew))} s {when}; at most {self.tolerance} s are allowed "
                "(a replayed request, or a clock that is off)",
                hint="sign each request when it is sent, and keep the sender's clock in sync (NTP)")
        expected = sign(secret, stamp, body)
        for candidate in given.split(","):  # several signatures may be sent (e.g. while a secret changes)
            candidate = candidate.strip()
            if hmac.compare_digest(expected.encode(), candidate.encode()):
                self._take_once(candidate, int(stamp) + self.tolerance + 1, now)
                return
        raise SignatureError("the signature does not match the request body and timestamp")

    def _take_once(self, signature: str, until: float, now: float) -> None:
        with self._lock:
            if signature in self._seen:
                raise SignatureError("this signed request was already received (a replay)",
                                     hint="sign every request anew, with the current time")
            if len(self._seen) >= self.max_remembered:
                for old in [s for s, t in self._seen.items() if t <= now]:
                    del self._seen[old]
                if len(self._seen) >= self.max_remembered:  # a flood of valid signatures: forget the oldest half
                    for old in list(self._seen)[: len(self._seen) // 2]:
                        del self._seen[old]
            self._seen[signature] = until


class TokenBuckets:
    """``per_minute`` requests per key, refilled continuously; at most ``max_buckets`` kept."""

    def __init__(self, per_minute: int, max_buckets: int = 100_000) -> None:
        self.per_minute = per_minute
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.max_buckets = max_buckets
        self._buckets: dict[Hashable, list[float]] = {}  # key -> [tokens, last refill (monotonic)]
        self._lock = threading.Lock()
        self.refused = 0

    def take(self, key: Hashable, now: float | None = None) -> float:
        """Take one token: 0.0 when there was one, else the seconds until there is."""
        now = time.monotonic() if now is None else now
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= self.max_buckets:
                    self._evict(now)
                self._buckets[key] = [self.capacity - 1.0, now]
                return 0.0
            tokens = min(self.capacity, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
            if tokens >= 1.0:
                bucket[0] = tokens - 1.0
                return 0.0
            bucket[0] = tokens
            self.refused += 1
            return (1.0 - tokens) / self.rate

    def remaining(self, key: Hashable, now: float | None = None) -> int:
        """Whole tokens left for ``key`` (what an ``X-RateLimit-Remaining`` header reports)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                return self.per_minute
            return int(min(self.capacity, bucket[0] + (now - bucket[1]) * self.rate))

    def _evict(self, now: float) -> None:
        full = [k for k, (tokens, last) in self._buckets.items() if tokens + (now - last) * self.rate >= self.capacity]
        for key in full:  # a full bucket holds nothing a new one would not
            del self._buckets[key]
        if len(self._buckets) >= self.max_buckets:
            for key in list(self._buckets)[: len(self._buckets) // 2]:
                del self._buckets[key]


class ProjectWindows:
    """At most ``per_minute`` requests per project in each fixed minute: counted in ``store``
    when it is shared by several collectors (PostgreSQL), else in this process."""

    WINDOW_MS = 60_000

    def __init__(self, per_minute: int, store: SecurityStore | None = None) -> None:
        self.per_minute = per_minute
        self.store = store if store is not None and store.shared_counters else None
        self._counts: dict[int, tuple[int, int]] = {}  # project -> (window start, requests)
        self._lock = threading.Lock()
        self.refused = 0

    def take(self, project_id: int, now_ms: int | None = None) -> float:
        """Count one request: 0.0 when it is within the limit, else the seconds left in the window."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        start = now_ms - now_ms % self.WINDOW_MS
        if self.store is not None:
            count = self.store.count_request(f"project:{project_id}", start, self.WINDOW_MS)
        else:
            with self._lock:
                window, count = self._counts.get(project_id, (start, 0))
                count = count + 1 if window == start else 1
                self._counts[project_id] = (start, count)
        if count <= self.per_minute:
            return 0.0
        self.refused += 1
        return (start + self.WINDOW_MS - now_ms) / 1000


class RateLimits:
    def __init__(self, per_key: int, per_ip: int, per_project: int = 0, store: SecurityStore | None = None) -> None:
        self.per_key = TokenBuckets(per_key) if per_key > 0 else None
        self.per_ip = TokenBuckets(per_ip) if per_ip > 0 else None
        self.per_project = ProjectWindows(per_project, store) if per_project > 0 else None

    def check_address(self, host: str | None) -> None:
        if self.per_ip is not None and host:
            wait = self.per_ip.take(host)
            if wait:
                raise RateLimited(f"too many requests from {host}: the limit is {self.per_ip.per_minute} per minute",
                                  _seconds(wait), "slow down and retry after Retry-After seconds (MCPMETER_RATE_LIMIT_PER_IP)")

    def check_key(self, key_id: int, prefix: str) -> None:
        if self.per_key is not None:
            wait = self.per_key.take(key_id)
            if wait:
                raise RateLimited(f"too many requests with API key {prefix}…: the limit is {self.per_key.per_minute} per minute",
                                  _seconds(wait), "slow down and retry after Retry-After seconds (MCPMETER_RATE_LIMIT_PER_KEY)")


    def check_project(self, project_id: int, name: str) -> None:
        if self.per_project is not None:
            wait = self.per_project.take(project_id)
            if wait:
                shared = " across all collectors" if self.per_project.store is not None else ""
                raise RateLimited(f"too many requests for project {name!r}: the limit is {self.per_project.per_minute} per "
                                  f"minute{shared}", _seconds(wait),
                                  "slow down and retry after Retry-After seconds (MCPMETER_RATE_LIMIT_PER_PROJECT)")


def _seconds(wait: float) -> int:
    return max(1, math.ceil(wait))


class _Known:
    __slots__ = ("servers", "tools")

    def __init__(self, servers: set[str], tools: set[tuple[str, str]]) -> None:
        self.servers, self.tools = servers, tools


class NameCaps:
    """Distinct servers and tools per project, as this collector knows them (loaded from the
    store once per project, then kept up to date with what it admits)."""

    def __init__(self, store, max_servers: int, max_tools: int) -> None:
        self.store = store
        self.max_servers = max_servers
        self.max_tools = max_tools
        self._known: dict[int, _Known] = {}
        self.refused = 0

    def loaded(self, project_id: int) -> bool:
        return project_id in self._known

    def load(self, project_id: int) -> None:
        """Read what the store knows (blocking: call it from a thread)."""
        if project_id not in self._known:
            servers, tools = self.store.known_names(project_id)
            self._known.setdefault(project_id, _Known(servers, tools))

    def _servers_refused(self, server: str) -> str:
        self.refused += 1
        return (f"the project already has {self.max_servers} distinct servers, its limit; a new server "
                f"{server[:80]!r} is refused (MCPMETER_MAX_SERVERS_PER_PROJECT) - `$.server`")

    def admit_servers(self, project_id: int, servers: set[str]) -> str | None:
        """Admit every server of one all-or-nothing request (measurements, server events), or
        none: why not. ``load`` the project first."""
        known = self._known[project_id]
        new = sorted(servers - known.servers)
        if len(known.servers) + len(new) > self.max_servers:
            return self._servers_refused(new[max(0, self.max_servers - len(known.servers))])
        known.servers.update(new)
        return None

    def admitter(self, project_id: int) -> Callable[[Event], str | None]:
        known = self._known[project_id]

        def admit(event: Event) -> str | None:
            server = event.server
            if server not in known.servers:
                if len(known.servers) >= self.max_servers:
                    return self._servers_refused(server)
                known.servers.add(server)
            tool = event.tool
            if tool and (server, tool) not in known.tools:
                if len(known.tools) >= self.max_tools:
                    self.refused += 1
                    return (f"the project already has {self.max_tools} distinct tools, its limit; a new tool "
                            f"{tool[:80]!r} is refused (MCPMETER_MAX_TOOLS_PER_PROJECT) - `$.tool`")
                known.tools.add((server, tool))
            return None

        return admit

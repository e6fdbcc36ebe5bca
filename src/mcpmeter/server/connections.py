"""Connections that hold the collector without asking anything: timed out, capped per address.

uvicorn answers 503 to every request once ``limit_concurrency`` connections are open, whether
or not they ever send a request, and it times out only idle keep-alive connections that send
nothing more: a connection that opens and stays silent, or sends its headers a byte at a
time, keeps its place for good, and 50 of them shut out everyone, ``/health`` included.

``GuardedH11Protocol`` is uvicorn's h11 protocol (the one uvicorn picks without httptools)
with three rules, kept per server process (see ``options()``, what ``mcpmeter serve`` and its
workers give uvicorn):

- A read deadline: a connection must deliver a request's headers within
  ``MCPMETER_READ_TIMEOUT_SECONDS`` of opening (or of its previous answer), and its body
  without a pause that long (while the app has stopped reading, the clock does not run).
  Otherwise it is closed. Keep-alive connections are still closed after uvicorn's 5 s.
- A cap per peer address: at most ``MCPMETER_MAX_CONNECTIONS_PER_IP`` open connections; one
  more is answered 503 and closed at once. Behind a reverse proxy every connection comes
  from the proxy's address (raise the cap, or set 0 for none).
- Under pressure: when ``MCPMETER_MAX_CONNECTIONS`` are open, a new connection closes the one
  that has waited longest for a request (silent, or idle between requests), so a request
  that is ready to be served is served. Connections busy with a request are never closed.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import Counter
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from .. import settings

PROTOCOL = "mcpmeter.server.connections:GuardedH11Protocol"
KEEP_ALIVE_SECONDS = 5  # uvicorn's default: an idle keep-alive connection is closed after this long

_WAITING, _BODY, _BUSY = "waiting", "body", "busy"  # for a request's headers / its body / the app has the request
_REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
            b"content-length: 51\r\n\r\ntoo many open connections from your address; retry\n")
assert len(_REFUSAL.split(b"\r\n\r\n", 1)[1]) == 51


def options() -> dict[str, Any]:
    """uvicorn settings for a collector process: the guarded protocol, and the connection cap."""
    return {"http": PROTOCOL, "limit_concurrency": settings.get("MCPMETER_MAX_CONNECTIONS") + 1,  # uvicorn counts the new one too
            "timeout_keep_alive": KEEP_ALIVE_SECONDS}


class Guard:
    """The rules' numbers and the open connections per address, for one uvicorn server."""

    def __init__(self) -> None:
        self.read_timeout = float(settings.get("MCPMETER_READ_TIMEOUT_SECONDS"))
        self.per_address = settings.get("MCPMETER_MAX_CONNECTIONS_PER_IP")
        self.max_connections = settings.get("MCPMETER_MAX_CONNECTIONS")
        self.open: Counter[str] = Counter()
        self.refused = 0  # over the cap per address
        self.timed_out = 0  # no headers, or a stalled body, within the read timeout
        self.evicted = 0  # waiting for a request when a new connection needed the room


_GUARDS: weakref.WeakKeyDictionary[ServerState, Guard] = weakref.WeakKeyDictionary()


def guard_of(server_state: ServerState) -> Guard:
    guard = _GUARDS.get(server_state)
    if guard is None:
        guard = _GUARDS[server_state] = Guard()
    return guard


class GuardedH11Protocol(H11Protocol):
    guard: Guard
    _address: str | None = None  # counted in Guard.open under this
    _phase = _WAITING
    _since = 0.0  # when the current phase began (loop time)
    _timer: asyncio.TimerHandle | None = None
    _refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard = self.guard = guard_of(self.server_state)
        address = self.client[0] if self.client else None
        if address is not None and guard.per_address and guard.open[address] >= guard.per_address:
            self._refused = True
            guard.refused += 1
            transport.write(_REFUSAL)
            transport.close()
            return
        if address is not None:
            self._address = address
            guard.open[address] += 1
        if len(self.connections) > guard.max_connections:
            self._evict_one()
        self._enter(_WAITING)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._track()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        if self._address is not None:
            open_ = self.guard.open
            open_[self._address] -= 1
            if open_[self._address] <= 0:
                del open_[self._address]
            self._address = None
        super().connection_lost(exc)

    # ---- the read deadline -----------------------------------------------------------------

    def _track(self) -> None:
        state = self.conn.their_state
        phase = _WAITING if state is h11.IDLE else _BODY if state is h11.SEND_BODY else _BUSY
        if phase == _WAITING and self._phase == _WAITING:
            return  # partial headers do not move the deadline
        self._enter(phase)  # entering the body phase, or more of the body: the deadline moves

    def _enter(self, phase: str) -> None:
        self._cancel()
        self._phase = phase
        self._since = self.loop.time()
        if phase != _BUSY and not self.transport.is_closing():
            self._timer = self.loop.call_later(self.guard.read_timeout, self._expire)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self._phase == _BUSY or self.transport.get_protocol() is not self:
            return
        if self.flow.read_paused:  # the app is not reading the body yet: not the client's delay
            self._enter(self._phase)
            return
        self.guard.timed_out += 1
        self.transport.close()

    # ---- room for requests that are ready ----------------------------------------------------

    def _evict_one(self) -> None:
        oldest: GuardedH11Protocol | None = None
        for other in self.connections:
            if (other is not self and isinstance(other, GuardedH11Protocol) and other._phase == _WAITING
                    and not other.transport.is_closing() and (oldest is None or other._since < oldest._since)):
                oldest = other
        if oldest is not None:
            self.guard.evicted += 1
            oldest._cancel()
            oldest.transport.close()
            self.connections.discard(oldest)  # counted out now, not when the loop reports it lost

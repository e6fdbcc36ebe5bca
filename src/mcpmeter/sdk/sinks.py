"""Where the worker's batches go: the ``Sink`` protocol and the sinks mcpmeter ships.

A ``Meter`` sends to a collector over HTTP (``HttpSink``, with the spool) when it has a URL,
else into the local store (``LocalSink``). ``Meter(sink=...)`` takes any object that
implements ``Sink`` instead - the way ``httpx.Client(transport=...)`` takes a transport -
and ``MemorySink`` is the one to use in tests: it keeps every event, or hands each batch
to a function of yours.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import msgspec

from .. import credentials
from ..events import Event, decode_batch
from ..exceptions import MCPMeterError
from .internal import internal_error, log
from .spool import Spool
from .stats import Stats
from .transport import HttpTransport

_encoder = msgspec.json.Encoder()


@runtime_checkable
class Sink(Protocol):
    """What a ``Meter``'s worker thread hands its batches to. Its methods are called from
    that one thread only; they should not raise (what they raise is logged, not retried).
    """

    def deliver(self, events: Sequence[Event], deadline: float | None) -> bool:
        """Deliver, spool or drop (and count) the events. False: keep them and retry later.

        ``deadline`` (``time.monotonic()`` seconds, or None) is when a waiting ``flush()``
        gives up; a sink that cannot deliver by then should keep the events safe instead.
        """
        ...

    def idle(self, deadline: float | None) -> None:
        """Called when there is nothing new: a chance to replay what was spooled."""
        ...

    def close(self) -> None:
        """The meter shut down: release what the sink holds (called once, last)."""
        ...


class HttpSink:
    REPLAY_EVERY = 5.0

    def __init__(self, url: str, api_key: str | None, spool_path: Path, spool_max_bytes: int, stats: Stats,
                 signing_secret: str | None = None) -> None:
        key = api_key or credentials.key_for(url, "ingest")
        self.transport = HttpTransport(url, key, signing_secret=signing_secret)
        self.url = self.transport.url
        self.stats = stats
        self._spool_path = spool_path
        self._spool_max = spool_max_bytes
        self._spool: Spool | None = None
        self._next_replay = 0.0
        self._warned = False

    def _spool_db(self) -> Spool:
        if self._spool is None:
            self._spool = Spool(self._spool_path, self._spool_max)
        return self._spool

    def deliver(self, events: Sequence[Event], deadline: float | None) -> bool:
        body = gzip.compress(_encoder.encode(events), compresslevel=5)
        outcome = self.transport.send(body, compressed=True, deadline=deadline)
        if outcome.delivered:
            self.stats.sent += len(events) - outcome.rejected
            if outcome.rejected:
                self.stats.drop("rejected_by_collector", outcome.rejected)
            self._warned = False
            self._replay(deadline)
        elif outcome.spool:
            self._keep(body, len(events), outcome.detail)
        else:
            self.stats.drop("rejected_by_collector", len(events))
            internal_error(f"the collector refused a batch of {len(events)} events ({outcome.detail})")
        return True

    def _keep(self, body: bytes, count: int, detail: str) -> None:
        if not self._warned:
            log.warning("mcpmeter: collector unavailable (%s); spooling to %s", detail, self._spool_path)
            self._warned = True
        try:
            stored = self._spool_db().put(self.url, body, count)
        except Exception as exc:  # a broken spool must not take the host down
            internal_error("cannot write the spool", exc)
            stored = False
        if stored:
            self.stats.spooled += count
        else:
            self.stats.drop("spool_full", count)

    def idle(self, deadline: float | None) -> None:
        if time.monotonic() >= self._next_replay:
            self._next_replay = time.monotonic() + self.REPLAY_EVERY
            self._replay(deadline)

    def _replay(self, deadline: float | None) -> None:
        if self._spool is None and not self._spool_path.exists():
            return
        spool = self._spool_db()
        while True:
            rows = spool.oldest(self.url)
            if not rows:
                return
            for row_id, count, body in rows:
                outcome = self.transport.send(body, attempts=1, compressed=True)
                if outcome.delivered:
                    spool.remove(row_id)
                    self.stats.replayed += count
                elif outcome.spool:
                    return  # still unreachable; keep it for later
                else:
                    spool.remove(row_id)
                    self.stats.drop("rejected_by_collector", count)
                if deadline is not None and time.monotonic() > deadline:
                    return

    def pending_spool(self) -> int:
        return self._spool_db().pending(self.url) if self._spool_path.exists() else 0

    def close(self) -> None:
        self.transport.close()
        if self._spool is not None:
            self._spool.close()


class LocalSink:
    """No collector configured: write straight into the local store (the "local fallback")."""

    def __init__(self, db: str | None, stats: Stats) -> None:
        from ..storage import open_store

        self.stats = stats
        self.store = open_store(db)
        self.project = self.store.ensure_project("default")

    def deliver(self, events: Sequence[Event], deadline: float | None) -> bool:
        from ..ingest import rows_for

        valid, rejected = decode_batch(_encoder.encode(events))
        if rejected:
            self.stats.drop("invalid", len(rejected))
            internal_error(f"{len(rejected)} events were invalid: {rejected[0].error}")
        try:
            self.store.ingest([(self.project.id, rows_for(self.project, valid))])
        except MCPMeterError as exc:
            internal_error("cannot write the local store; will retry", exc)
            return False
        self.stats.sent += len(valid)
        return True

    def idle(self, deadline: float | None) -> None:
        pass

    def close(self) -> None:
        self.store.close()


class MemorySink:
    """Keeps every event in memory: ``Meter(sink=MemorySink())`` in tests (like ``httpx.MockTransport``).

    ``events`` is the list of what was delivered, in order (read it after ``meter.flush()``).
    ``handler``, if given, is called with each batch and routes it wherever you like; a
    batch it answers ``False`` for is kept and offered again in the next round, as for a
    collector that is down (an exception it raises is logged as the SDK's own error).

    >>> sink = MemorySink()
    >>> meter = Meter(server="weblab", sink=sink)
    >>> meter.record("search")
    >>> meter.flush()
    True
    >>> [e.tool for e in sink.events]
    ['search']
    """

    def __init__(self, handler: Callable[[Sequence[Event]], Any] | None = None) -> None:
        self.handler = handler
        self.events: list[Event] = []
        self.batches = 0
        self.closed = False
        self._lock = threading.Lock()

    def deliver(self, events: Sequence[Event], deadline: float | None) -> bool:
        if self.handler is not None and self.handler(events) is False:
            return False
        with self._lock:
            self.events.extend(events)
            self.batches += 1
        return True

    def idle(self, deadline: float | None) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def clear(self) -> list[Event]:
        """Take the events kept so far (and forget them)."""
        with self._lock:
            taken, self.events = self.events, []
        return taken

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
from .spool import Spool, spool_owner
from .stats import Stats
from .transport import HELD_STATUSES, HttpTransport, Outcome

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
    """Sends to a collector; keeps what it cannot deliver in the spool, under its own identity.

    What happens to a batch: delivered; or kept in the spool (collector unreachable, timed out,
    5xx, or the key refused - 401/403/404: *held*, reported, never sent under another key);
    or refused for good (any other 4xx: dropped and counted, never retried, never blocking
    the batches after it). A spooled batch that keeps failing with a 5xx while the batches
    around it get through is dropped after ``POISONED_AFTER`` such rounds (counted as
    ``poisoned_batch``), so one batch can never hold the spool up.
    """

    REPLAY_EVERY = 5.0
    POISONED_AFTER = 3

    def __init__(self, url: str, api_key: str | None, spool_path: Path, spool_max_bytes: int, stats: Stats,
                 signing_secret: str | None = None) -> None:
        key = api_key or credentials.key_for(url, "ingest")
        self.transport = HttpTransport(url, key, signing_secret=signing_secret)
        self.url = self.transport.url
        # Whose the spooled batches are: the key this program was given. Without one, the key a
        # local `mcpmeter serve` saved for the URL stands for "that collector's default project",
        # whichever key it saved last, so its batches are that identity too.
        self.owner = spool_owner(api_key, signing_secret)
        self.stats = stats
        self._spool_path = spool_path
        self._spool_max = spool_max_bytes
        self._spool: Spool | None = None
        self._next_replay = 0.0
        self._warned = False
        self._held_warned = False
        self._unowned_checked = False

    def _spool_db(self) -> Spool:
        if self._spool is None:
            self._spool = Spool(self._spool_path, self._spool_max)
        return self._spool

    def abort(self) -> None:
        """Cut the request in progress short (another thread: the exit deadline is near)."""
        self.transport.abort()

    def deliver(self, events: Sequence[Event], deadline: float | None) -> bool:
        body = gzip.compress(_encoder.encode(events), compresslevel=5)
        outcome = self.transport.send(body, compressed=True, deadline=deadline)
        if outcome.delivered:
            self.stats.sent += len(events) - outcome.rejected
            if outcome.rejected:
                self.stats.drop("rejected_by_collector", outcome.rejected)
            self._warned = False
            self._replay(deadline, collector_ok=True)
        elif outcome.spool:
            self._keep(body, len(events), outcome)
        else:
            self.stats.drop("rejected_by_collector", len(events))
            internal_error(f"the collector refused a batch of {len(events)} events ({outcome.detail})")
        return True

    def keep(self, events: Sequence[Event]) -> bool:
        """Spool ``events`` without trying to send them (the exit deadline has passed)."""
        body = gzip.compress(_encoder.encode(events), compresslevel=5)
        return self._keep(body, len(events), None)

    def _keep(self, body: bytes, count: int, outcome: Outcome | None) -> bool:
        if outcome is not None and outcome.status in HELD_STATUSES:
            self._report_held(outcome.detail)
        elif outcome is not None and not self._warned:
            log.warning("mcpmeter: collector unavailable (%s); spooling to %s", outcome.detail, self._spool_path)
            self._warned = True
        try:
            stored = self._spool_db().put(self.url, self.owner, body, count)
        except Exception as exc:  # a broken spool must not take the host down
            internal_error("cannot write the spool", exc)
            stored = False
        if stored:
            self.stats.spooled += count
            if outcome is not None and outcome.status in HELD_STATUSES:
                self.stats.held += count
        else:
            self.stats.drop("spool_full", count)
        return stored

    def _report_held(self, detail: str) -> None:
        if not self._held_warned:
            log.warning("mcpmeter: %s refused this program's key (%s); its events are kept in %s and will be "
                        "sent with this key only once the collector accepts it", self.url, detail, self._spool_path)
            self._held_warned = True

    def idle(self, deadline: float | None) -> None:
        if time.monotonic() >= self._next_replay:
            self._next_replay = time.monotonic() + self.REPLAY_EVERY
            self._replay(deadline, collector_ok=False)

    def _replay(self, deadline: float | None, collector_ok: bool) -> None:
        """Send this identity's spooled batches, oldest first, until one cannot go through.

        ``collector_ok``: a delivery just succeeded, so a 5xx now is about the batch, not an outage.
        """
        if self._spool is None and not self._spool_path.exists():
            return
        spool = self._spool_db()
        self._check_unowned(spool)
        after = 0
        while True:
            rows = spool.oldest(self.url, self.owner, after=after)
            if not rows:
                return
            for row_id, count, body in rows:
                after = row_id
                outcome = self.transport.send(body, attempts=1, compressed=True, deadline=deadline)
                if outcome.delivered:
                    spool.remove(row_id)
                    self.stats.replayed += count
                    collector_ok = True
                elif outcome.status in HELD_STATUSES:
                    self._report_held(outcome.detail)
                    return  # this key is refused: every batch of this identity stays where it is
                elif outcome.spool:
                    if outcome.status < 500 or not collector_ok:
                        return  # unreachable (or an outage): keep it for later
                    # The collector stores other batches but fails this one: skip it, and give up
                    # on it after a few rounds rather than letting it hold the spool up.
                    if spool.strike(row_id) >= self.POISONED_AFTER:
                        spool.remove(row_id)
                        self.stats.drop("poisoned_batch", count)
                        internal_error(f"a spooled batch of {count} events failed {self.POISONED_AFTER} times "
                                       f"while others were stored; dropped ({outcome.detail})")
                else:
                    spool.remove(row_id)
                    self.stats.drop("rejected_by_collector", count)
                    internal_error(f"the collector refused a spooled batch of {count} events ({outcome.detail})")
                if deadline is not None and time.monotonic() > deadline:
                    return

    def _check_unowned(self, spool: Spool) -> None:
        if self._unowned_checked:
            return
        self._unowned_checked = True
        unowned = spool.unowned(self.url)
        if unowned:
            log.warning("mcpmeter: %s holds %d events for %s spooled by an earlier mcpmeter without a record of "
                        "whose they are; they are kept, never sent under this program's key",
                        self._spool_path, unowned, self.url)

    def pending_spool(self) -> int:
        return self._spool_db().pending(self.url, self.owner) if self._spool_path.exists() else 0

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

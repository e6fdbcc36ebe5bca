"""The background worker: one daemon thread per Meter.

It wakes on a short timer (or when asked to flush), turns the queued tuples into events,
and hands full batches - or whatever is there once the flush interval has passed - to
the sink. The caller of a tool never waits for any of this.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..events import Event, new_event
from ..protocol import SDK_DROPPED, TOOL_CALL
from .internal import internal_error

if TYPE_CHECKING:
    from .meter import Meter
    from .sinks import Sink

_TICK = 0.2
_SPOOL_MARGIN = 0.5


class Worker:
    def __init__(self, meter: Meter, make_sink: Callable[[], Sink]) -> None:
        self.meter = meter
        self._make_sink = make_sink
        self._sink: Sink | None = None
        self._wake = threading.Event()
        self._stop = False
        self._waiters: list[tuple[threading.Event, float]] = []
        self._lock = threading.Lock()
        self._pending: list[Event] = []
        self._last_send = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="mcpmeter-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def flush(self, timeout: float) -> bool:
        if not self._thread.is_alive():
            return False
        done = threading.Event()
        with self._lock:
            self._waiters.append((done, time.monotonic() + timeout))
        self._wake.set()
        return done.wait(timeout)

    def stop(self, timeout: float) -> bool:
        flushed = self.flush(timeout)
        self._stop = True
        self._wake.set()
        self._thread.join(timeout)
        return flushed

    def _run(self) -> None:
        try:
            sink = self._sink = self._make_sink()
        except Exception as exc:
            internal_error("cannot start recording; events will be dropped", exc)
            self._fail_all()
            return
        try:
            while not self._stop:
                self._wake.wait(_TICK)
                self._wake.clear()
                self._cycle()
            self._cycle(final=True)
        finally:
            try:
                sink.close()
            except Exception as exc:
                internal_error("closing the sink failed", exc)

    def _cycle(self, final: bool = False) -> None:
        """One round of work; ``final`` (at stop) sends whatever is pending, due or not."""
        with self._lock:
            waiters, self._waiters = self._waiters, []
        sink = self._sink
        assert sink is not None  # set by _run before the first cycle
        try:
            self._drain()
            self._report_drops()  # before sending, so a flush or the final round carries the report
            # Leave a margin before the caller's deadline so that what cannot be delivered
            # in time is spooled (safe) before flush() returns, rather than just after.
            deadline = min((d for _, d in waiters), default=None)
            if deadline is not None:
                deadline -= min(_SPOOL_MARGIN, max(deadline - time.monotonic(), 0.0) / 4)
            now = time.monotonic()
            due = final or waiters or now - self._last_send >= self.meter.flush_interval
            while len(self._pending) >= self.meter.batch_size or (due and self._pending):
                batch = self._pending[: self.meter.batch_size]
                if not sink.deliver(batch, deadline):
                    break  # sink asked to keep them; retried next cycle
                del self._pending[: len(batch)]
                self._last_send = time.monotonic()
            else:
                sink.idle(deadline)
        except Exception as exc:
            internal_error("the worker failed a cycle", exc)
        finally:
            for done, _ in waiters:
                done.set()

    def _drain(self) -> None:
        """Move queued tuples (and ready events) into ``_pending`` as events."""
        meter = self.meter
        queue = meter._queue
        offset = time.time() - time.perf_counter()
        server, version, user, transport = meter.server, meter.server_version, meter.user, meter.transport_name
        hash_user = meter._hash_user
        if hash_user is not None:
            user = hash_user(user)
        pending = self._pending
        room = max(meter.max_queue - len(pending), 0)
        while queue:
            item = queue.popleft()
            if room <= 0:
                meter.stats.drop("queue_full")
                continue
            room -= 1
            meter.stats.recorded += 1
            if isinstance(item, Event):
                if hash_user is not None and item.user is not None:
                    item.user = hash_user(item.user)
                pending.append(item)
                continue
            tool, category, start, duration, error_type, message = item
            ts = int((start + offset) * 1000)
            pending.append(new_event(
                TOOL_CALL, ts, server, server_version=version, tool=tool, category=category,
                duration_ms=round(duration * 1000, 3), ok=error_type is None, error_type=error_type,
                error_message=message, user=user, transport=transport,
            ))

    def _report_drops(self) -> None:
        stats = self.meter.stats
        # Report what was dropped since the last report (deltas, so the store can sum them).
        attrs = {reason: n - stats.reported[reason] for reason, n in stats.dropped.items() if n > stats.reported[reason]}
        if attrs:
            ts = int(time.time() * 1000)
            stats.reported.update(attrs)
            self._pending.append(new_event(SDK_DROPPED, ts, self.meter.server, attributes=attrs))

    def _fail_all(self) -> None:
        while not self._stop:
            self._wake.wait(_TICK)
            self._wake.clear()
            with self._lock:
                waiters, self._waiters = self._waiters, []
            dropped = len(self.meter._queue)
            self.meter._queue.clear()
            if dropped:
                self.meter.stats.drop("sink_unavailable", dropped)
            for done, _ in waiters:
                done.set()

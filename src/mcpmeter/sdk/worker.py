"""The background worker: one daemon thread per Meter.

It wakes on a short timer (or when asked to flush), turns the queued tuples into events,
and hands full batches - or whatever is there once the flush interval has passed - to
the sink. The caller of a tool never waits for any of this.

The worker holds its meter only weakly: a Meter that the host drops is garbage-collected,
and its worker then delivers what was left and ends. Every running worker is in
``RUNNING``, so that the exit (``stop_all``) bounds all of them with one deadline.
An event that cannot be encoded is repaired (rebuilt within the wire format's limits) or
dropped and counted, on its own: it never holds up the events around it.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import msgspec

from ..events import Event, new_event
from ..protocol import SDK_DROPPED, TOOL_CALL
from .internal import internal_error
from .stats import Stats

_TICK = 0.2
_SPOOL_MARGIN = 0.5
# A batch the sink cannot deliver within this long (collector hung, or refusing with 429/5xx)
# is spooled rather than kept in memory, which bounds what a kill -9 can lose.
SEND_BUDGET = 5.0
_encoder = msgspec.json.Encoder()
_EVENT_FIELDS = tuple(f for f in Event.__struct_fields__ if f not in ("id", "kind", "ts", "server"))

RUNNING: set[Worker] = set()  # workers whose thread runs (strong references: a dropped meter's one finishes)
_running_lock = threading.Lock()


class _Waiter:
    __slots__ = ("deadline", "done", "ok")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.done = threading.Event()
        self.ok = False


class _Config:
    """What the worker needs of its meter, copied each round so that it outlives the meter."""

    __slots__ = ("batch_size", "flush_interval", "hash_user", "max_queue", "server", "transport", "user", "version")

    def __init__(self, meter: Any) -> None:
        self.server, self.version, self.user = meter.server, meter.server_version, meter.user
        self.transport, self.hash_user = meter.transport_name, meter._hash_user
        self.batch_size, self.flush_interval, self.max_queue = meter.batch_size, meter.flush_interval, meter.max_queue


class Worker:
    def __init__(self, meter: Any, make_sink: Callable[[], Any]) -> None:
        self._meter = weakref.ref(meter, self._meter_gone)
        self._queue = meter._queue
        self.stats: Stats = meter.stats
        self._config = _Config(meter)
        self._make_sink = make_sink
        self._sink: Any = None
        self._wake = threading.Event()
        self._stop = False
        self._stop_deadline: float | None = None
        self._waiters: list[_Waiter] = []
        self._lock = threading.Lock()
        self._pending: list[Event] = []
        self._last_send = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="mcpmeter-worker", daemon=True)

    def start(self) -> None:
        with _running_lock:
            RUNNING.add(self)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def flush(self, timeout: float) -> bool:
        """True when everything recorded so far was delivered, spooled or counted as dropped in time."""
        if not self._thread.is_alive():
            return False
        waiter = _Waiter(time.monotonic() + timeout)
        with self._lock:
            self._waiters.append(waiter)
        self._wake.set()
        return waiter.done.wait(timeout) and waiter.ok

    def begin_stop(self, deadline: float) -> None:
        """Ask for a last round that is over by ``deadline`` (monotonic), then the end of the thread."""
        if self._stop_deadline is None or deadline < self._stop_deadline:
            self._stop_deadline = deadline
        self._stop = True
        self._wake.set()

    def finish(self, deadline: float) -> bool:
        """Wait for the thread until ``deadline``; near it, cut the request in progress short."""
        margin = _margin(deadline)
        self._thread.join(max(deadline - margin / 2 - time.monotonic(), 0.0))
        if self._thread.is_alive():
            abort = getattr(self._sink, "abort", None)
            if abort is not None:
                try:
                    abort()
                except Exception as exc:
                    internal_error("cannot interrupt the sink", exc)
            self._thread.join(max(deadline - time.monotonic(), 0.0))
        return not self._thread.is_alive()

    def stop(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        self.begin_stop(deadline)
        return self.finish(deadline)

    def _meter_gone(self, _ref: object) -> None:
        from .meter import exit_timeout

        self.begin_stop(time.monotonic() + exit_timeout())

    # ---- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            try:
                self._sink = self._make_sink()
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
                    self._sink.close()
                except Exception as exc:
                    internal_error("closing the sink failed", exc)
        finally:
            with _running_lock:
                RUNNING.discard(self)

    def _cycle(self, final: bool = False) -> None:
        """One round of work; ``final`` (at stop) sends whatever is pending, due or not."""
        with self._lock:
            waiters, self._waiters = self._waiters, []
        ok = False
        try:
            meter = self._meter()
            if meter is not None:
                self._config = _Config(meter)
                del meter  # never hold the meter between rounds
            config = self._config
            self._drain(config)
            self._report_drops()  # before sending, so a flush or the final round carries the report
            # Leave a margin before the caller's deadline so that what cannot be delivered
            # in time is spooled (safe) before flush() returns, rather than just after.
            deadline = min((w.deadline for w in waiters), default=None)
            if final and self._stop_deadline is not None:
                deadline = self._stop_deadline if deadline is None else min(deadline, self._stop_deadline)
            if deadline is not None:
                deadline -= _margin(deadline)
            now = time.monotonic()
            due = final or waiters or now - self._last_send >= config.flush_interval
            send_by = deadline if deadline is not None else now + SEND_BUDGET
            while len(self._pending) >= config.batch_size or (due and self._pending):
                batch = self._pending[: config.batch_size]
                if final and time.monotonic() >= send_by:
                    self._keep(batch)  # no time left to send: spool it (or count it lost)
                elif not self._deliver(batch, send_by):
                    break  # sink asked to keep them; retried next cycle
                del self._pending[: len(batch)]
                self._last_send = time.monotonic()
            else:
                self._sink.idle(deadline)
            ok = not self._pending and not self._queue
        except Exception as exc:
            internal_error("the worker failed a cycle", exc)
        finally:
            for waiter in waiters:
                waiter.ok = ok
                waiter.done.set()

    def _deliver(self, batch: list[Event], deadline: float) -> bool:
        """Hand ``batch`` to the sink; an event it cannot take is repaired or dropped (counted), alone."""
        try:
            return bool(self._sink.deliver(batch, deadline))
        except Exception as exc:
            good = list(_encodable(batch))
            bad = len(batch) - len(good)
            if bad or any(g is not e for g, e in zip(good, batch)):
                if bad:
                    self.stats.drop("unencodable", bad)
                internal_error(f"events that could not be encoded were rebuilt within the limits ({bad} dropped)", exc)
                if not good:
                    return True
                try:
                    return bool(self._sink.deliver(good, deadline))
                except Exception as again:
                    exc = again
            # Sinks should not raise; what one raises is logged, and the batch is not retried.
            self.stats.drop("sink_error", len(good))
            internal_error(f"the sink failed a batch of {len(good)} events; dropped", exc)
            return True

    def _keep(self, batch: list[Event]) -> None:
        keep = getattr(self._sink, "keep", None)
        try:
            if keep is not None and keep(batch):
                return
        except Exception as exc:
            internal_error("cannot spool at exit", exc)
        self.stats.drop("exit_deadline", len(batch))

    def _drain(self, config: _Config) -> None:
        """Move queued tuples (and ready events) into ``_pending`` as events."""
        queue = self._queue
        stats = self.stats
        offset = time.time() - time.perf_counter()
        server, version, user, transport = config.server, config.version, config.user, config.transport
        hash_user = config.hash_user
        if hash_user is not None:
            user = hash_user(user)
        pending = self._pending
        room = max(config.max_queue - len(pending), 0)
        while queue:
            item = queue.popleft()
            if room <= 0:
                stats.drop("queue_full")
                continue
            room -= 1
            stats.recorded += 1
            try:
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
            except Exception as exc:  # one unusable item never stops the others
                stats.drop("invalid")
                internal_error("an event could not be built; dropped", exc)

    def _report_drops(self) -> None:
        stats = self.stats
        # Report what was dropped since the last report (deltas, so the store can sum them).
        attrs = {reason: n - stats.reported[reason] for reason, n in stats.dropped.items() if n > stats.reported[reason]}
        if attrs:
            ts = int(time.time() * 1000)
            stats.reported.update(attrs)
            self._pending.append(new_event(SDK_DROPPED, ts, self._config.server, attributes=attrs))

    def _fail_all(self) -> None:
        while not self._stop:
            self._wake.wait(_TICK)
            self._wake.clear()
            with self._lock:
                waiters, self._waiters = self._waiters, []
            dropped = len(self._queue)
            self._queue.clear()
            if dropped:
                self.stats.drop("sink_unavailable", dropped)
            for waiter in waiters:
                waiter.done.set()  # ok stays False: nothing was delivered


def _margin(deadline: float) -> float:
    return min(_SPOOL_MARGIN, max(deadline - time.monotonic(), 0.0) / 4)


def _encodable(batch: Iterable[Event]) -> Iterable[Event]:
    """The events of ``batch`` that encode, each one rebuilt within the limits if it did not at first."""
    for event in batch:
        try:
            _encoder.encode(event)
            yield event
            continue
        except Exception:
            pass
        try:
            fields = {name: getattr(event, name) for name in _EVENT_FIELDS}
            ts = event.ts
            ts_ms = ts if type(ts) is int else int(ts.timestamp() * 1000) if isinstance(ts, datetime) else 0
            repaired = new_event(str(event.kind), ts_ms or int(time.time() * 1000), event.server,
                                 id=str(event.id), **fields)
            _encoder.encode(repaired)
        except Exception:
            continue
        yield repaired


def stop_all(deadline: float, workers: Iterable[Worker] | None = None) -> bool:
    """Stop every running worker (or ``workers``) by one shared ``deadline``; True if all ended."""
    with _running_lock:
        chosen = list(RUNNING if workers is None else workers)
    for worker in chosen:
        worker.begin_stop(deadline)
    return all([worker.finish(deadline) for worker in chosen])


"""The single writer: group commit across concurrent requests.

Request handlers hand their rows to ``submit`` and await the result. One thread takes
everything that has queued up while the previous transaction committed and writes it in
one transaction, so the cost of a durable commit is shared by every request in the group.
An answer is only given after the commit returned, so a 2xx always means durable.

One request's data must never fail the others of its group: when a group's transaction
fails for any reason other than the store itself (``StorageError``: unreachable, disk full,
locked), each request of the group is written again in a transaction of its own, so only the
request at fault fails - with ``Unstorable`` (HTTP 422) when the store refused its values.
A store fault fails the whole group at once (503), without trying each request against a
store that is down.

After each commit, and before any request of it is answered, the writer hands a ``Commit``
(the rows really inserted, per project; ``commits``) to every function that subscribed with
``subscribe``: the live feed, ``/metrics`` and OTLP export. A subscriber that fails is logged
and never fails an ingest that is already durable.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

from ...events import Row
from ...exceptions import Overloaded, StorageError, Unstorable
from ...storage.base import IngestResult, Store
from ..commits import Commit

log = logging.getLogger("mcpmeter.server.collector")

_STOP = object()

Subscriber = Callable[[Commit], None]
"""Called in the writer thread with each commit, before its requests are answered."""


class Writer:
    def __init__(self, store: Store, max_group_rows: int = 20_000, max_pending_rows: int = 500_000) -> None:
        self.store = store
        self.max_group_rows = max_group_rows
        self.max_pending_rows = max_pending_rows
        self.pending_rows = 0  # read by metrics; only approximate across threads
        self.commits = 0
        self.errors = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._count_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        """Have ``subscriber`` called with every commit from now on (before its requests are answered)."""
        self._subscribers.append(subscriber)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mcpmeter-writer", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread:
            self._queue.put(_STOP)
            self._thread.join(timeout)

    def submit(self, project_id: int, rows: Sequence[Row]) -> asyncio.Future[IngestResult]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not rows:
            future.set_result(IngestResult(0, 0))
            return future
        with self._count_lock:
            if self.pending_rows + len(rows) > self.max_pending_rows:
                raise Overloaded(f"{self.pending_rows} events are waiting to be written")
            self.pending_rows += len(rows)
        self._queue.put((project_id, rows, loop, future))
        return future

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            group = [item]
            size = len(item[1])
            stop = False
            while size < self.max_group_rows:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                group.append(nxt)
                size += len(nxt[1])
            self._commit(group, size)
            if stop:
                return

    def _commit(self, group: list, size: int) -> None:
        failure = self._write(group, size)
        self._done(size)
        if failure is None:
            return
        if len(group) == 1 or isinstance(failure, StorageError):  # a store fault fails the group at once
            for _, _, loop, future in group:
                loop.call_soon_threadsafe(_fail, future, failure)
            return
        # Some request's data failed the group: each request on its own, so only that one fails.
        log.warning("storing a group of %d requests failed (%s); storing each on its own", len(group), failure)
        for item in group:
            if (alone := self._write([item], len(item[1]))) is not None:
                item[2].call_soon_threadsafe(_fail, item[3], alone)

    def _write(self, group: list, size: int) -> Exception | None:
        """Store the requests of ``group`` in one transaction and answer them; or, when it
        fails, return the exception (nothing of the group was stored, nobody answered)."""
        subscribers = self._subscribers
        stored: dict[int, list[Row]] | None = {} if subscribers else None
        started = time.perf_counter()
        try:
            results = self.store.ingest([(project_id, rows) for project_id, rows, _, _ in group], stored)
        except Exception as exc:
            self.errors += 1
            if isinstance(exc, (StorageError, Unstorable)):
                log.error("storing %d events failed: %s", size, exc)
            else:  # neither the store's fault nor a value it refused: a bug, seen with these rows
                log.exception("storing %d events failed", size)
            return exc
        self.commits += 1
        if stored is not None:  # before answering: a 2xx means /metrics and the live feed have the batch
            self._publish(Commit(stored, size, time.perf_counter() - started))
        for (_, _, loop, future), result in zip(group, results):
            loop.call_soon_threadsafe(_succeed, future, result)
        return None

    def _publish(self, commit: Commit) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(commit)
            except Exception:  # a subscriber must never fail an ingest that is already durable
                log.exception("publishing a commit to %s failed", getattr(subscriber, "__qualname__", subscriber))

    def _done(self, size: int) -> None:
        with self._count_lock:
            self.pending_rows -= size


def _succeed(future: asyncio.Future, result: IngestResult) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)

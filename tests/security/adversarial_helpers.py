"""The adversarial suite's machinery: a pair of real collectors (SQLite and PostgreSQL) with the same
keys, what each store holds (to prove a refused request stored nothing), and hostile requests.

Both collectors get the same bytes; ``Pair.send`` answers with both responses.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

from conftest import Keys, make_keys, start_collector, stop_collector
from foundation_helpers import EVERYTHING, now_ms
from mcpmeter.storage import open_store
from mcpmeter.storage.base import EventFilter
from store_backends import BACKENDS, store_location

ENV = {"MCPMETER_RATE_LIMIT_PER_KEY": "0", "MCPMETER_RATE_LIMIT_PER_IP": "0", "MCPMETER_LOCAL_TRUST": "false"}


@dataclass
class Side:
    """One backend: its collector, its store (read by the test) and keys of projects A and B."""

    backend: str
    collector: Any
    store: Any
    a: Keys
    b: Keys
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.collector.url, timeout=30)

    def held(self, project: str = "a") -> tuple[int, ...]:
        """Everything a request can add to a project: events, measurements, server events, keys, grants, audit entries."""
        store = self.store
        p = store.project_by_name(project)
        f = EventFilter(p.id, *EVERYTHING)
        return (
            store.count_events(f, kind=None),
            sum(row[5] for row in store.measurement_days(f)),
            len(store.server_events(f, limit=1_000_000)),
            len(store.list_keys(p.id)),
            len(store.list_access(p.id)),
            len(store.audit_entries(p.id, 0, 1_000_000)),
        )


@dataclass
class Pair:
    sides: tuple[Side, ...]

    def send(self, method: str, path: str, *, key: str | None = "a.ingest", content: bytes | None = None,
             headers: dict[str, str] | None = None, params: Any = None) -> list[httpx.Response]:
        """The same request to every backend (``key``: "a.ingest", "b.read"…, or None for no credentials)."""
        answers = []
        for side in self.sides:
            h = {name: value.encode() for name, value in (headers or {}).items()}  # UTF-8 bytes: obs-text, as sent
            if key is not None:
                project, scope = key.split(".")
                h.setdefault("Authorization", f"Bearer {getattr(getattr(side, project), scope)}".encode())
            url = path + ("?" + urlencode(params, errors="surrogatepass") if params else "")  # lone surrogates sent as bytes
            answers.append(side.client.request(method, url, content=content, headers=h))
        return answers


@contextmanager
def collector_pair(directory: Path) -> Iterator[Pair]:
    """A real `mcpmeter serve` on each backend, each store holding projects a and b with keys of every scope."""
    with ExitStack() as stack:
        sides = []
        env = {**ENV, "MCPMETER_HOME": str(directory / "home")}
        for backend in BACKENDS:
            location = stack.enter_context(store_location(backend, directory))
            store = open_store(location)
            stack.callback(store.close)
            a, b = make_keys(store, "a"), make_keys(store, "b")
            c = start_collector(location, env=env, log=directory / f"{backend}.log")
            stack.callback(stop_collector, c)
            side = Side(backend, c, store, a, b)
            stack.callback(side.client.close)
            sides.append(side)
        yield Pair(tuple(sides))


class Bystander:
    """Project B ingesting on every backend all along, in its own thread: every batch must be 2xx and stored."""

    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        self.sent = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bystander", daemon=True)
        self._batch = 0
        self._run_id = uuid.uuid4().hex[:12]
        self._held_before: list[int] = []

    def __enter__(self) -> Bystander:
        self._held_before = [side.held("b")[0] for side in self.pair.sides]
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        with ExitStack() as stack:
            clients = [stack.enter_context(httpx.Client(base_url=s.collector.url, timeout=30)) for s in self.pair.sides]
            while not self._stop.is_set():
                self._batch += 1
                batch = [{"id": f"b-{self._run_id}-{self._batch}-{i}", "kind": "tool_call", "ts": now_ms(), "server": "bystander",
                          "tool": f"t{i % 3}", "ok": True} for i in range(20)]
                body = gzip.compress(json.dumps(batch).encode())
                for side, client in zip(self.pair.sides, clients):
                    r = client.post("/v1/events", content=body, headers={
                        "Authorization": f"Bearer {side.b.ingest}", "Content-Type": "application/json",
                        "Content-Encoding": "gzip"})
                    if r.status_code != 200 or r.json()["accepted"] != 20:
                        self.failures.append(f"{side.backend}: {r.status_code} {r.text[:300]}")
                self.sent += 20
                self._stop.wait(0.02)

    def check(self) -> None:
        assert not self.failures, self.failures[:5]
        assert self.sent > 0
        deadline = time.monotonic() + 10
        for side, before in zip(self.pair.sides, self._held_before):
            while side.held("b")[0] - before != self.sent and time.monotonic() < deadline:
                time.sleep(0.05)
            assert side.held("b")[0] - before == self.sent, (side.backend, side.held("b"), before, self.sent)


def encode(body: bytes, how: str) -> tuple[bytes, dict[str, str]]:
    """``body`` with a Content-Encoding, honest or not."""
    if how == "identity":
        return body, {}
    if how == "gzip":
        return gzip.compress(body), {"Content-Encoding": "gzip"}
    if how == "gzip+trailing":
        return gzip.compress(body) + b"\x00junk", {"Content-Encoding": "gzip"}
    if how == "gzip+member":
        return gzip.compress(body) + gzip.compress(b"[]"), {"Content-Encoding": "gzip"}
    if how == "gzip-truncated":
        return gzip.compress(body)[:-6], {"Content-Encoding": "gzip"}
    if how == "deflate":
        return zlib.compress(body), {"Content-Encoding": "deflate"}
    if how == "lies":  # says gzip, is not
        return body, {"Content-Encoding": "gzip"}
    if how == "br":
        return body, {"Content-Encoding": "br"}
    raise ValueError(how)


ENCODINGS = ("identity", "gzip", "gzip+trailing", "gzip+member", "gzip-truncated", "deflate", "lies", "br")

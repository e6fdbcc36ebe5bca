"""Connections that send nothing, or half a request, cannot take the collector down (issue 12,
item 11): a real `mcpmeter serve`, raw sockets on 127.0.0.1 (127.0.0.2 plays another address).
Storage plays no part here, so one backend suffices."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from conftest import start_collector, stop_collector

READ_TIMEOUT = 2.0
SETTINGS = {"MCPMETER_MAX_CONNECTIONS": "50", "MCPMETER_READ_TIMEOUT_SECONDS": str(READ_TIMEOUT),
            "MCPMETER_MAX_CONNECTIONS_PER_IP": "200"}


@pytest.fixture
def guarded(tmp_path):
    c = start_collector(tmp_path / "c.db", env=SETTINGS)
    yield c
    stop_collector(c)


@contextlib.contextmanager
def sockets(port: int, count: int, first_bytes: list[bytes], source: str = "127.0.0.1") -> Iterator[list[socket.socket]]:
    """``count`` connections, the i-th sending ``first_bytes[i % len]`` (b"": nothing) and then nothing more."""
    opened = []
    try:
        for i in range(count):
            s = socket.socket()
            s.bind((source, 0))
            s.connect(("127.0.0.1", port))
            if first_bytes[i % len(first_bytes)]:
                s.sendall(first_bytes[i % len(first_bytes)])
            opened.append(s)
        yield opened
    finally:
        for s in opened:
            s.close()


def closed_by_server(s: socket.socket, within: float) -> bytes | None:
    """What the server sent before closing (None if it did not close within ``within`` s)."""
    s.settimeout(within)
    received = b""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(4096)
        except ConnectionResetError:
            return received
        except TimeoutError:
            return None
        if not chunk:
            return received
        received += chunk
    return None


def health_within(url: str, seconds: float) -> tuple[int, float]:
    started = time.monotonic()
    r = httpx.get(url + "/health", timeout=seconds)
    return r.status_code, time.monotonic() - started


PARTIAL = [b"", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ",  # nothing; headers never finished
           b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n[{",
           b"G"]  # a body that stalls; one byte


def test_silent_and_half_sent_connections_leave_room_and_are_closed(guarded):
    port = int(guarded.url.rsplit(":", 1)[1])
    with sockets(port, 60, PARTIAL) as idle:
        status, took = health_within(guarded.url, 5)
        assert status == 200 and took < 2, (status, took)  # not 503: the waiting ones make room
        statuses = [httpx.get(guarded.url + "/ready", timeout=5).status_code for _ in range(5)]
        assert statuses == [200] * 5
        started = time.monotonic()
        ends = [closed_by_server(s, READ_TIMEOUT + 5) for s in idle]
        assert all(end is not None for end in ends), f"{sum(e is None for e in ends)} of 60 still open"
        assert time.monotonic() - started < READ_TIMEOUT + 5
        answered = [end for end in ends if end]  # closed without an answer, or (a full request at the cap) a 503
        assert all(end.startswith(b"HTTP/1.1 503") for end in answered), answered
    # A connection that trickles its headers a byte at a time is closed at the deadline too.
    with socket.create_connection(("127.0.0.1", port)) as s:
        started = time.monotonic()
        for byte in b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Trickle: " + b"a" * 100:
            try:
                s.sendall(bytes([byte]))
            except OSError:
                break
            if closed_by_server(s, 0.25) is not None:
                break
        took = time.monotonic() - started
        assert READ_TIMEOUT - 0.5 < took < READ_TIMEOUT + 3, took
    # Keep-alive still works: a second request on the same connection.
    with httpx.Client() as client:
        assert client.get(guarded.url + "/health").status_code == 200
        assert client.get(guarded.url + "/health").status_code == 200


def test_one_address_cannot_hold_every_connection(tmp_path):
    c = start_collector(tmp_path / "c.db", env={**SETTINGS, "MCPMETER_MAX_CONNECTIONS_PER_IP": "10"})
    try:
        port = int(c.url.rsplit(":", 1)[1])
        request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        with sockets(port, 10, [b""], source="127.0.0.2") as held:
            with sockets(port, 3, [request], source="127.0.0.2") as more:
                for s in more:
                    answer = closed_by_server(s, 5)
                    assert answer is not None and answer.startswith(b"HTTP/1.1 503"), answer
                    assert b"too many open connections from your address" in answer
            assert health_within(c.url, 5)[0] == 200  # another address is served
            assert len(held) == 10
        deadline = time.monotonic() + 5  # room again once they are gone (the server sees them close)
        while True:
            with sockets(port, 1, [request], source="127.0.0.2") as again:
                again[0].settimeout(5)
                answer = again[0].recv(4096)
            if answer.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert answer.startswith(b"HTTP/1.1 200"), answer
    finally:
        stop_collector(c)

"""``Meter(sink=...)``: any object implementing the sink protocol receives the meter's events."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from mcpmeter import ConfigError, Meter
from mcpmeter.events import Event
from mcpmeter.sdk.sinks import HttpSink, LocalSink, MemorySink, Sink


@pytest.fixture
def sink():
    return MemorySink()


@pytest.fixture
def meter(sink):
    m = Meter(server="weblab", sink=sink, flush_interval=0.05)
    yield m
    m.shutdown()


def test_a_memory_sink_receives_every_event_and_nothing_is_written_locally(meter, sink, isolated_env: Path):
    @meter.tool(category="rag")
    def search(query: str) -> str:
        return query

    @meter.tool
    def broken() -> None:
        raise KeyError("gone")

    assert search("q") == "q"
    with pytest.raises(KeyError):
        broken()
    meter.record("by_hand", kind="list_tools", duration_ms=2.0)
    assert meter.flush(5)
    got = [(e.kind, e.tool, e.category, e.ok, e.error_type) for e in sink.events]
    assert got == [("tool_call", "search", "rag", True, None), ("tool_call", "broken", None, False, "KeyError"),
                   ("list_tools", "by_hand", None, None, None)]
    assert {e.server for e in sink.events} == {"weblab"}
    assert not (isolated_env / "mcpmeter.db").exists()  # the injected sink replaced the local store
    assert [e.tool for e in sink.clear()] == ["search", "broken", "by_hand"] and sink.events == []


def test_the_sink_is_closed_when_the_meter_shuts_down(sink):
    meter = Meter(server="weblab", sink=sink)
    meter.record("search")
    assert meter.shutdown(5)
    assert sink.closed and [e.tool for e in sink.events] == ["search"]


def test_a_handler_routes_batches_and_a_refused_batch_is_offered_again():
    seen: list[list[str]] = []
    refuse = threading.Event()
    refuse.set()

    def route(batch: Sequence[Event]) -> bool:
        seen.append([e.tool or "" for e in batch])
        if refuse.is_set():
            refuse.clear()
            return False  # e.g. the destination is down: keep them
        return True

    sink = MemorySink(route)
    meter = Meter(server="weblab", sink=sink, flush_interval=60)  # batches leave on flush() only
    try:
        meter.record("a")
        meter.record("b")
        assert not meter.flush(5)  # the batch is still in memory: flush() says so
        assert meter.flush(5)
    finally:
        meter.shutdown()
    assert seen[:2] == [["a", "b"], ["a", "b"]]
    assert [e.tool for e in sink.events] == ["a", "b"]


def test_any_object_with_the_sink_methods_will_do():
    class Printer:
        def __init__(self) -> None:
            self.lines: list[str] = []

        def deliver(self, events: Sequence[Event], deadline: float | None) -> bool:
            self.lines += [f"{e.kind} {e.tool}" for e in events]
            return True

        def idle(self, deadline: float | None) -> None:
            pass

        def close(self) -> None:
            pass

    printer = Printer()
    meter = Meter(server="weblab", sink=printer)
    meter.record("search")
    assert meter.shutdown(5)
    assert printer.lines == ["tool_call search"]
    assert isinstance(printer, Sink)


def test_something_that_is_not_a_sink_is_refused_with_a_hint():
    with pytest.raises(ConfigError) as info:
        Meter(server="weblab", sink=object())
    assert "not a sink" in str(info.value) and "MemorySink" in info.value.hint


def test_the_shipped_sinks_implement_the_protocol():
    for cls in (HttpSink, LocalSink, MemorySink):
        assert all(callable(getattr(cls, name, None)) for name in ("deliver", "idle", "close")), cls

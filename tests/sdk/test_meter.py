"""The recorder: decorating tools, recording by hand, flushing, and never getting in the way."""

from __future__ import annotations

import asyncio
import inspect
import json
import subprocess
import sys

import pytest

from conftest import MCPMETER
from foundation_helpers import stored_events
from mcpmeter import Meter
from mcpmeter.exceptions import ConfigError
from mcpmeter.sdk import internal
from mcpmeter.storage import open_store


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "local.db")


@pytest.fixture
def make_meter(db):
    made: list[Meter] = []

    def make(**kwargs) -> Meter:
        kwargs.setdefault("server", "weblab")
        kwargs.setdefault("db", db)
        meter = Meter(**kwargs)
        made.append(meter)
        return meter

    yield make
    for meter in made:
        meter.shutdown(5)


@pytest.fixture
def meter(make_meter):
    return make_meter()


def calls(db: str) -> list[dict]:
    store = open_store(db)
    try:
        return [e for e in stored_events(store) if e["kind"] == "tool_call"]
    finally:
        store.close()


# ---- decorating ------------------------------------------------------------------------------


def test_a_sync_tool_is_recorded_under_its_function_name(meter, db):
    @meter.tool(category="rag")
    def search(query: str, limit: int = 3) -> list[str]:
        """Search the weblab."""
        return [query] * limit

    assert search("q", limit=2) == ["q", "q"]
    assert meter.flush(5)
    (row,) = calls(db)
    assert (row["server"], row["tool"], row["category"], row["ok"]) == ("weblab", "search", "rag", 1)
    assert row["duration_ms"] >= 0
    assert row["error_type"] is None
    assert row["transport"] == "stdio"


def test_the_decorator_works_with_and_without_parentheses_and_can_rename(meter, db):
    @meter.tool
    def plain() -> int:
        return 1

    @meter.tool(name="renamed")
    def original() -> int:
        return 2

    assert (plain(), original()) == (1, 2)
    assert meter.flush(5)
    assert sorted(r["tool"] for r in calls(db)) == ["plain", "renamed"]


def test_the_analytics_seeds_positional_form_names_the_tool_and_its_category(meter, db):
    @meter.tool("rag_search", "rag")  # the seed's @usage_tracker.track_tool('tool_name', 'category')
    def search(query: str) -> str:
        return query

    @meter.tool("create_task")
    async def create(title: str) -> str:
        return title

    assert search("q") == "q" and asyncio.run(create("t")) == "t"
    assert meter.flush(5)
    assert sorted((r["tool"], r["category"]) for r in calls(db)) == [("create_task", None), ("rag_search", "rag")]
    with pytest.raises(ConfigError, match="both by position and by keyword"):
        meter.tool("a", name="b")
    with pytest.raises(ConfigError, match="both by position and by keyword"):
        meter.tool("a", "rag", category="rag")
    with pytest.raises(ConfigError, match="second positional argument is the category"):
        meter.tool(search, 5)


def test_return_values_are_passed_through_untouched(meter):
    sentinel = object()

    @meter.tool
    def give():
        return sentinel

    assert give() is sentinel


def test_functools_wraps_is_preserved(meter):
    def search(query: str, *, limit: int = 3) -> list[str]:
        """Search the weblab."""
        return []

    wrapped = meter.tool(search)
    assert wrapped.__name__ == "search"
    assert wrapped.__doc__ == "Search the weblab."
    assert wrapped.__wrapped__ is search
    assert inspect.signature(wrapped) == inspect.signature(search)


def test_an_exception_is_recorded_with_its_type_and_re_raised_unchanged(meter, db):
    error = LookupError("no experiment 42")

    @meter.tool
    def details(experiment: int):
        raise error

    with pytest.raises(LookupError) as info:
        details(42)
    assert info.value is error
    assert meter.flush(5)
    (row,) = calls(db)
    assert (row["tool"], row["ok"], row["error_type"], row["error_message"]) == ("details", 0, "LookupError", "no experiment 42")


def test_an_async_tool_is_recorded_and_stays_a_coroutine_function(meter, db):
    @meter.tool(category="time")
    async def now(tz: str) -> str:
        await asyncio.sleep(0)
        return f"12:00 {tz}"

    @meter.tool
    async def broken() -> None:
        raise TimeoutError("upstream")

    assert inspect.iscoroutinefunction(now)
    assert now.__name__ == "now"

    async def main():
        assert await now("UTC") == "12:00 UTC"
        with pytest.raises(TimeoutError):
            await broken()

    asyncio.run(main())
    assert meter.flush(5)
    rows = {r["tool"]: r for r in calls(db)}
    assert (rows["now"]["ok"], rows["now"]["category"]) == (1, "time")
    assert (rows["broken"]["ok"], rows["broken"]["error_type"]) == (0, "TimeoutError")


def test_an_async_tool_that_is_cancelled_is_recorded_as_failed(meter, db):
    @meter.tool
    async def slow():
        await asyncio.sleep(10)

    async def main():
        task = asyncio.ensure_future(slow())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert meter.flush(5)
    (row,) = calls(db)
    assert (row["tool"], row["ok"], row["error_type"]) == ("slow", 0, "CancelledError")


def test_the_duration_is_measured(meter, db):
    import time

    @meter.tool
    def wait():
        time.sleep(0.05)

    wait()
    assert meter.flush(5)
    assert 45 <= calls(db)[0]["duration_ms"] < 5000


# ---- recording by hand ---------------------------------------------------------------------------


def test_record_stores_any_kind_with_extra_fields(meter, db):
    meter.record("search", duration_ms=12.5, session_id="s1", client_name="cursor", attributes={"region": "eu"})
    meter.record("search", error_type="Boom", error_message="it broke")
    meter.record(kind="session_start", session_id="s1")
    assert meter.flush(5)
    store = open_store(db)
    try:
        rows = stored_events(store)
    finally:
        store.close()
    assert [(r["kind"], r["tool"], r["ok"]) for r in rows] == [
        ("tool_call", "search", 1), ("tool_call", "search", 0), ("session_start", None, None),
    ]
    assert (rows[0]["duration_ms"], rows[0]["session_id"], rows[0]["client_name"]) == (12.5, "s1", "cursor")
    assert json.loads(rows[0]["attributes"]) == {"region": "eu"}
    assert (rows[1]["error_type"], rows[1]["error_message"]) == ("Boom", "it broke")


def test_record_with_an_unknown_field_reports_instead_of_raising(meter, db):
    meter.record("search", colour="blue")  # must not raise
    assert meter.flush(5)
    reported = list(internal.errors)
    internal.errors.clear()
    assert len(reported) == 1 and "colour" in str(reported[0])
    assert calls(db) == []


def test_an_invalid_recorded_event_is_dropped_counted_and_reported(meter, db):
    meter.record("t", kind="Not a kind")  # no clipping makes this a valid kind
    meter.record("fine")
    assert meter.flush(5)
    reported = list(internal.errors)
    internal.errors.clear()
    assert reported and "invalid" in str(reported[0])
    assert meter.stats.dropped["invalid"] == 1
    assert [r["tool"] for r in calls(db)] == ["fine"]


# ---- identity -------------------------------------------------------------------------------------


def test_the_user_is_stored_as_a_hash_and_defaults_to_mcpmeter_user(make_meter, db, monkeypatch):
    monkeypatch.setenv("MCPMETER_USER", "alice@example.com")
    alice = make_meter()
    bob = make_meter(user="bob@example.com")
    alice.record("search")
    bob.record("search")
    assert alice.flush(5) and bob.flush(5)
    hashes = [r["user_hash"] for r in calls(db)]
    assert len(set(hashes)) == 2 and None not in hashes
    assert not {"alice@example.com", "bob@example.com"} & set(hashes)


def test_the_server_name_comes_from_the_environment_when_not_given(db, monkeypatch):
    monkeypatch.setenv("MCPMETER_SERVER_NAME", "from-env")
    meter = Meter(db=db)
    try:
        assert meter.server == "from-env"
        assert Meter(server="explicit", disabled=True).server == "explicit"
    finally:
        meter.shutdown(5)


# ---- lifecycle -----------------------------------------------------------------------------------


def test_flush_delivers_everything_recorded_so_far(meter, db):
    @meter.tool
    def ping():
        return "pong"

    for _ in range(250):
        ping()
    assert meter.flush(5)
    assert len(calls(db)) == 250
    assert meter.stats.recorded == meter.stats.sent == 250


def test_shutdown_flushes_and_later_calls_still_work_but_are_not_recorded(make_meter, db):
    meter = make_meter()

    @meter.tool
    def ping():
        return "pong"

    ping()
    assert meter.shutdown(5)
    assert len(calls(db)) == 1
    assert ping() == "pong"
    meter.record("manual")
    assert meter.flush(1) and meter.shutdown(1)
    assert len(calls(db)) == 1


def test_a_disabled_meter_returns_the_function_itself_and_records_nothing(db, tmp_path):
    meter = Meter(server="weblab", db=db, disabled=True)

    def search():
        return 1

    async def asearch():
        return 1

    assert meter.tool(search) is search
    assert meter.tool(category="x")(asearch) is asearch
    meter.record("search")
    assert meter.flush(1) and meter.shutdown(1)
    assert not (tmp_path / "local.db").exists()


@pytest.mark.parametrize("value", ["true", "1", "yes"])
def test_mcpmeter_disabled_turns_the_meter_off(db, monkeypatch, value):
    monkeypatch.setenv("MCPMETER_DISABLED", value)
    meter = Meter(server="weblab", db=db)

    def search():
        return 1

    assert meter.disabled and meter.tool(search) is search


def test_a_full_queue_drops_counts_and_reports_what_it_dropped(make_meter, db):
    meter = make_meter(max_queue=5, flush_interval=60)

    @meter.tool
    def ping():
        return "pong"

    for _ in range(500):
        assert ping() == "pong"
    assert meter.flush(5)  # one flush delivers the calls and the report of the drops
    dropped = meter.stats.dropped["queue_full"]
    assert dropped > 0
    assert meter.stats.recorded + dropped == 500
    store = open_store(db)
    try:
        rows = stored_events(store)
    finally:
        store.close()
    assert sum(r["kind"] == "tool_call" for r in rows) == meter.stats.recorded
    reports = [json.loads(r["attributes"]) for r in rows if r["kind"] == "sdk.dropped"]
    assert sum(r.get("queue_full", 0) for r in reports) == dropped  # each report carries what is new


def test_drops_are_reported_even_when_the_meter_is_shut_down_right_away(make_meter, db):
    meter = make_meter(max_queue=2, flush_interval=60)
    for _ in range(100):
        meter.record("ping")
    assert meter.shutdown(5)
    store = open_store(db)
    try:
        reports = [json.loads(r["attributes"]) for r in stored_events(store) if r["kind"] == "sdk.dropped"]
    finally:
        store.close()
    assert sum(r.get("queue_full", 0) for r in reports) == meter.stats.dropped["queue_full"] > 0


def test_a_broken_configuration_never_breaks_the_tool(make_meter):
    meter = make_meter(url="ftp://example.invalid")

    @meter.tool
    def ping():
        return "pong"

    assert ping() == "pong"
    meter.flush(2)
    reported = list(internal.errors)
    internal.errors.clear()
    assert any("not an http(s) URL" in str(e) for e in reported)


def test_local_calls_show_up_in_mcpmeter_report(isolated_env):
    program = (
        "from mcpmeter import Meter\n"
        "meter = Meter(server='weblab')\n"
        "@meter.tool\n"
        "def search(q): return q\n"
        "@meter.tool\n"
        "def details(i):\n"
        "    raise KeyError(i)\n"
        "for i in range(7): search(i)\n"
        "for i in range(2):\n"
        "    try: details(i)\n"
        "    except KeyError: pass\n"
    )
    # no flush and no shutdown: the exit handler delivers what was recorded
    subprocess.run([sys.executable, "-c", program], check=True, timeout=60)
    out = subprocess.run([*MCPMETER, "report", "--format", "json"], check=True, capture_output=True, text=True, timeout=60)
    report = json.loads(out.stdout)
    assert (report["calls"], report["errors"], report["users"]) == (9, 2, 1)
    assert {t["tool"]: (t["calls"], t["errors"]) for t in report["tools"]} == {"search": (7, 0), "details": (2, 2)}
    assert (isolated_env / "mcpmeter.db").exists()

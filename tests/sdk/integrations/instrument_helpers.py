"""Shared by the instrument() tests: a meter on a store in tmp_path, and reading it back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from foundation_helpers import stored_events
from mcpmeter import Meter
from mcpmeter.cli.main import cli
from mcpmeter.storage import open_store


def new_meter(tmp_path: Path, **options: Any) -> Meter:
    return Meter(db=str(tmp_path / "meter.db"), **options)


def recorded(meter: Meter, catalog: bool = False) -> list[dict[str, Any]]:
    """What the meter recorded about requests (with the ``tool_listed`` catalog when asked),
    as stored (after delivering what is queued)."""
    assert meter.flush(10), "the meter did not deliver in time"
    store = open_store(meter._db)
    try:
        return [e for e in stored_events(store)
                if not e["kind"].startswith("sdk.") and (catalog or e["kind"] != "tool_listed")]
    finally:
        store.close()


def tool_calls(events: list[dict[str, Any]]) -> list[tuple]:
    """(tool, ok, error_type) of every tool_call, in the order they were recorded."""
    return [(e["tool"], bool(e["ok"]), e["error_type"]) for e in events if e["kind"] == "tool_call"]


def kinds(events: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in events:
        out[e["kind"]] = out.get(e["kind"], 0) + 1
    return out


def attributes(event: dict[str, Any]) -> dict[str, Any]:
    return json.loads(event["attributes"]) if event["attributes"] else {}


def report(db: str) -> dict[str, Any]:
    """`mcpmeter report --format json` on the store, as a user would ask for it."""
    result = CliRunner().invoke(cli, ["report", "--format", "json", "--period", "1d", "--db", db])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def report_tools(db: str) -> dict[str, tuple[int, int]]:
    """tool -> (calls, errors) from the report."""
    return {t["tool"]: (t["calls"], t["errors"]) for t in report(db)["tools"]}


def wire(result: Any) -> str:
    """A result as the JSON the client received, for byte-for-byte comparison."""
    return json.dumps(result.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=True)

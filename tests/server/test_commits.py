"""server.commits and Writer.subscribe: a commit is aggregated once and reaches every subscriber."""

from __future__ import annotations

import asyncio

from mcpmeter.events import ROW_FIELDS, Row
from mcpmeter.server.collector.writer import Writer
from mcpmeter.server.commits import Commit, ProjectBatch
from mcpmeter.storage import open_store


def _row(n: int, **fields) -> Row:
    base = dict.fromkeys(ROW_FIELDS)
    base.update({"event_id": f"e{n}", "kind": "tool_call", "ts": 1_700_000_000_000 + n * 1000, "server": "weblab",
                 "tool": "search", "ok": 1, "duration_ms": 5.0, "client_name": "cursor"}, **fields)
    return Row(*(base[f] for f in ROW_FIELDS))


def test_cells_add_up_the_rows_by_key_with_their_minutes():
    rows = [_row(0), _row(1, ok=0, error_type="TimeoutError", duration_ms=None), _row(70), _row(2, client_name="claude")]
    cells = ProjectBatch(1, rows).cells()
    ok = cells[("tool_call", "weblab", "search", "cursor", 1, None)]
    assert (ok.events, ok.timed, ok.sum_ms) == (2, 2, 10.0)
    assert list(ok.minutes.values()) == [1, 1]  # rows 0 and 70 are in different minutes
    failed = cells[("tool_call", "weblab", "search", "cursor", 0, "TimeoutError")]
    assert (failed.events, failed.timed, failed.buckets) == (1, 0, {})
    assert sum(c.events for c in cells.values()) == len(rows)


def test_a_batch_is_aggregated_once_for_all_its_readers():
    batch = ProjectBatch(1, [_row(0)])
    assert batch.cells() is batch.cells()


def test_every_subscriber_gets_each_commit_and_a_failing_one_fails_no_ingest(tmp_path):
    store = open_store(str(tmp_path / "s.db"))
    project = store.ensure_project("default")
    writer = Writer(store)
    seen: list[Commit] = []

    def broken(commit: Commit) -> None:
        raise RuntimeError("a subscriber bug")

    writer.subscribe(broken)
    writer.subscribe(seen.append)
    writer.start()

    async def scenario():
        first = await writer.submit(project.id, [_row(0), _row(1)])
        again = await writer.submit(project.id, [_row(1), _row(2)])  # e1 is a duplicate
        return first, again

    try:
        first, again = asyncio.run(scenario())
    finally:
        writer.stop()
        store.close()
    assert (first.accepted, again.accepted, again.duplicates) == (2, 1, 1)
    assert [(c.submitted, c.stored) for c in seen] == [(2, 2), (2, 1)]
    assert [r.event_id for r in seen[1].projects[project.id].rows] == ["e2"]  # only what was really inserted
    assert all(c.seconds >= 0 for c in seen)

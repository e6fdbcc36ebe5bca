"""Exports over HTTP: every usage answer as CSV, Markdown or JSON (``format=`` or ``Accept``),
on both backends, with the figures of the JSON answer; bad export requests get a clear 4xx."""

from __future__ import annotations

import csv
import io

import pytest
from starlette.testclient import TestClient

from conftest import make_keys
from foundation_helpers import event, now_ms
from mcpmeter.analytics.questions import QUESTIONS
from mcpmeter.server.collector import create_app


@pytest.fixture
def filled(store):
    keys = make_keys(store)
    now = now_ms()
    calls = [event(server="weblab", tool="weblab_search", user=f"u{i % 3}", duration_ms=10.0 + i, ts=now - i * 60_000,
                   client_name="claude-code") for i in range(12)]
    calls += [event(server="weblab", tool="=HYPERLINK(\"x\")", user="mallory", ts=now - 90_000),
              event(server="archon", tool="rag|query", user="u9", ok=False, error_type="TimeoutError",
                    error_message="no answer\nin 30 s", ts=now - 30_000, client_name="cursor")]
    with TestClient(create_app(store)) as c:
        auth = {"Authorization": f"Bearer {keys.ingest}"}
        assert c.post("/v1/events", json=calls, headers=auth).json()["accepted"] == 14
        yield c, {"Authorization": f"Bearer {keys.read}"}


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_the_report_as_csv_has_the_figures_of_the_json_answer(filled):
    c, auth = filled
    answer = c.get("/v1/usage/report", params={"period": "1d"}, headers=auth).json()
    r = c.get("/v1/usage/report", params={"period": "1d", "format": "csv"}, headers=auth)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    disposition = r.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="mcpmeter-default-report-tools-') and disposition.endswith('.csv"')
    table = rows(r.text)
    assert [(t["server"], t["tool"].removeprefix("'"), int(t["calls"])) for t in table] == [
        (t["server"], t["tool"], t["calls"]) for t in answer["tools"]]
    assert sum(int(t["calls"]) for t in table) == answer["calls"] == 14
    # a tool name a spreadsheet would run as a formula is written as text
    assert "'=HYPERLINK(\"x\")" in {t["tool"] for t in table}
    errors = rows(c.get("/v1/usage/report", params={"period": "1d", "format": "csv", "table": "errors"}, headers=auth).text)
    assert [(e["tool"], e["error_type"], e["count"]) for e in errors] == [("rag|query", "TimeoutError", "1")]


def test_markdown_and_json_downloads(filled):
    c, auth = filled
    r = c.get("/v1/usage/report", params={"period": "1d", "format": "markdown", "server": "archon"}, headers=auth)
    assert r.status_code == 200 and r.headers["content-type"] == "text/markdown; charset=utf-8"
    assert r.headers["content-disposition"].endswith('.md"')
    md = r.text
    assert md.startswith("# MCP usage report") and "project `default`" in md and "server `archon`" in md
    assert "| How many people use it? | 1 distinct users" in md
    assert "`rag\\|query`" in md  # a pipe in a name does not break the table
    r = c.get("/v1/usage/tools", params={"period": "1d", "format": "json"}, headers=auth)
    assert r.headers["content-type"] == "application/json" and r.headers["content-disposition"].endswith('.json"')
    assert r.json()["calls"] == 14 and r.json()["project"] == "default"


def test_the_accept_header_chooses_when_format_is_not_given(filled):
    c, auth = filled
    r = c.get("/v1/usage/errors", params={"period": "1d"}, headers={**auth, "Accept": "text/csv"})
    assert r.headers["content-type"] == "text/csv; charset=utf-8" and "content-disposition" not in r.headers
    assert [(e["tool"], e["count"]) for e in rows(r.text)] == [("rag|query", "1")]
    r = c.get("/v1/usage/errors", params={"period": "1d"}, headers={**auth, "Accept": "text/html;q=0.9, text/markdown"})
    assert r.headers["content-type"].startswith("text/markdown") and "## Types" in r.text and "no answer in 30 s" in r.text
    r = c.get("/v1/usage/errors", params={"period": "1d"}, headers={**auth, "Accept": "text/csv;q=0.5, application/json"})
    assert r.json()["errors"] == 1
    r = c.get("/v1/usage/errors", params={"period": "1d"}, headers={**auth, "Accept": "text/html, */*;q=0.8"})
    assert r.json()["errors"] == 1  # a browser's Accept
    r = c.get("/v1/usage/errors", params={"period": "1d"}, headers={**auth, "Accept": "image/png"})
    assert r.status_code == 406 and "text/csv" in r.json()["hint"]


@pytest.mark.parametrize("name", QUESTIONS)
def test_every_question_exports_every_table_and_markdown(filled, name):
    c, auth = filled
    q = QUESTIONS[name]
    assert q.tables, f"{name} declares no table to export"
    for table in q.tables:
        r = c.get(q.path, params={"period": "1d", "format": "csv", "table": table.name}, headers=auth)
        assert r.status_code == 200, (table, r.text)
    r = c.get(q.path, params={"period": "1d", "format": "markdown"}, headers=auth)
    assert r.status_code == 200 and r.text.startswith("# "), r.text


def test_bad_export_requests_are_refused_with_a_hint(filled):
    c, auth = filled
    r = c.get("/v1/usage/report", params={"format": "xlsx"}, headers=auth)
    assert r.status_code == 400 and "xlsx" in r.json()["error"] and "csv" in r.json()["hint"]
    r = c.get("/v1/usage/report", params={"format": "csv", "table": "colours"}, headers=auth)
    assert r.status_code == 400 and "colours" in r.json()["error"] and "timeseries" in r.json()["hint"]
    r = c.get("/v1/usage/report", params={"format": "markdown", "table": "tools"}, headers=auth)
    assert r.status_code == 400 and "format=csv" in r.json()["hint"]
    assert c.get("/v1/usage/report", params={"format": "csv"}).status_code == 401  # the same key as the JSON answer


def test_the_cli_csv_is_the_registrys(filled, tmp_path):
    """`mcpmeter report --format csv` writes the very table the API sends (one renderer)."""
    from mcpmeter.cli.render import to_csv

    c, auth = filled
    answer = c.get("/v1/usage/report", params={"period": "1d"}, headers=auth).json()
    api = c.get("/v1/usage/report", params={"period": "1d", "format": "csv", "table": "timeseries"}, headers=auth).text
    assert to_csv(answer, "timeseries") == api

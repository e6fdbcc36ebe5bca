"""Every surface exposes exactly the usage questions and filters of the registry (analytics/questions.py).

The surfaces are derived from the registry; these tests make sure they stay derived: a question
or a filter added to the registry appears on each of them (or the test names the one that forgot).
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from starlette.testclient import TestClient

from mcpmeter.analytics import queries, questions
from mcpmeter.analytics.questions import DIMENSIONS, FILTERS, GRAIN, QUESTIONS, WINDOW
from mcpmeter.server.collector import create_app
from mcpmeter.storage import open_store
from mcpmeter.storage.base import EventFilter

FILTER_NAMES = [p.name for p in FILTERS]
DIMENSION_NAMES = [p.name for p in DIMENSIONS]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = open_store(str(tmp_path_factory.mktemp("registry") / "store.db"), durable=False)
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(store):
    with TestClient(create_app(store), client=("127.0.0.1", 5000), base_url="http://127.0.0.1") as c:
        yield c


def test_the_dimensions_are_the_fields_of_the_query_and_of_the_storage_filter():
    assert list(queries.Query._fields[2:]) == DIMENSION_NAMES
    assert list(EventFilter._fields[3:]) == DIMENSION_NAMES


def test_the_http_routes_are_the_questions(client):
    usage = {r.path for r in client.app.routes if getattr(r, "path", "").startswith("/v1/usage/")}
    assert usage == {q.path for q in QUESTIONS.values()}


@pytest.mark.parametrize("name", QUESTIONS)
def test_each_route_takes_exactly_the_declared_parameters(client, name):
    q = QUESTIONS[name]
    r = client.get(q.path, params={"period": "1d"})
    assert r.status_code == 200, r.text
    assert r.json()["project"] == "default" and "from" in r.json()
    hint = client.get(q.path, params={"colour": "blue"}).json()["hint"]
    assert hint == "allowed: " + ", ".join(sorted(p.name for p in q.http_parameters))  # with format and table


def test_the_openapi_document_lists_every_question_with_its_parameters(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {p for p in paths if p.startswith("/v1/usage/")} == {q.path for q in QUESTIONS.values()}
    for q in QUESTIONS.values():
        op = paths[q.path]["get"]
        assert op["summary"] == q.summary
        assert [p["name"] for p in op["parameters"]] == [*FILTER_NAMES, GRAIN.name, *(p.name for p in q.options),
                                                         "format", "table"]
        assert [t.name for t in q.tables] == op["parameters"][-1]["schema"]["enum"][:-1]  # and "" (not given)


def test_the_mcp_tools_take_the_filters_of_their_question(store):
    pytest.importorskip("mcp")
    from mcpmeter.mcp_server.server import ASKED, NOT_TOOLS, build_server
    from mcpmeter.mcp_server.sources import StoreSource

    tools = asyncio.run(build_server(StoreSource(store)).list_tools())
    assert {t.name for t in tools} == set(ASKED)
    for tool in tools:
        _, without = ASKED[tool.name]
        declared = [n for n in tool.input_schema["properties"] if n in ("period", *DIMENSION_NAMES)]
        assert declared == [n for n in ("period", *DIMENSION_NAMES) if n not in without], tool.name
    # Every question is a tool or deliberately not one.
    asked = {question for question, _ in ASKED.values()}
    assert asked | NOT_TOOLS == set(QUESTIONS) and not asked & NOT_TOOLS


def test_the_report_command_has_an_option_per_filter():
    from mcpmeter.cli.main import cli

    options = [p.name for p in cli.commands["report"].params if p.param_type_name == "option"]
    assert options[:len(FILTERS)] == FILTER_NAMES
    assert set(options) & {"grain"} == set()  # the report picks its grain from the window


def test_the_dashboard_is_given_the_filters_and_preloads_questions(client):
    page = client.get("/?server=weblab").text
    embedded = re.search(r'<script type="application/json" id="registry">(.*?)</script>', page).group(1)
    registry = json.loads(embedded)
    assert [f["name"] for f in registry["filters"]] == FILTER_NAMES
    assert [f["name"] for f in registry["filters"] if f["kind"] == "window"] == [p.name for p in WINDOW]
    assert all(f["label"] and f["plural"] for f in registry["filters"] if f["kind"] == "dimension")
    assert registry["questions"] == list(QUESTIONS)
    preloaded = re.findall(r'rel="preload" as="fetch" crossorigin href="/v1/usage/([a-z-]+)\?', page)
    assert preloaded and set(preloaded) <= set(QUESTIONS)


def test_no_script_keeps_its_own_list_of_filters():
    from importlib.resources import files

    js = files("mcpmeter.server.dashboard") / "static" / "js"
    for script in js.iterdir():
        text = script.read_text()
        # a hard-coded filter list names two dimensions side by side, e.g. ["server", "tool", "client"]
        assert not re.search(r'["\'](server|tool|client)["\']\s*,\s*["\'](server|tool|client)["\']', text), script.name
        assert "FILTER_KEYS" not in text, script.name


def test_an_unknown_question_or_parameter_is_refused_with_a_hint():
    with pytest.raises(questions.ValidationError) as exc:
        questions.question("popularity")
    assert "summary" in exc.value.hint
    with pytest.raises(questions.ValidationError, match=r"unknown query parameter\(s\): colour"):
        questions.parse(QUESTIONS["tools"], {"colour": "blue"}, 1)

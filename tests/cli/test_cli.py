"""The `mcpmeter` command: reports, keys, schema, demo data, push, and friendly errors."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import time

import httpx
import pytest
from click.testing import CliRunner

from conftest import MCPMETER
from foundation_helpers import event
from mcpmeter.cli.main import cli
from mcpmeter.storage import open_store
from mcpmeter.storage.sqlite_migrations import MIGRATIONS

LATEST = MIGRATIONS[-1].version


def mcpmeter(*args: str, input: str | None = None):
    """Run the CLI in-process; an unexpected exception (a traceback for a user) fails the test."""
    result = CliRunner().invoke(cli, list(args), input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def assert_friendly_error(result, message: str, hint: str | None = None) -> None:
    """One line `error: ...`, one line `hint: ...`, exit code 1, no traceback."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and message in lines[0], lines
    if hint is not None:
        assert len(lines) == 2 and lines[1].startswith("hint: ") and hint in lines[1], lines
    assert "Traceback" not in result.output
    assert "error:" not in result.stdout


@pytest.fixture
def db(tmp_path) -> str:
    return str(tmp_path / "cli.db")


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory) -> str:
    """A small demo store shared by the read-only report tests."""
    path = str(tmp_path_factory.mktemp("demo") / "demo.db")
    result = CliRunner().invoke(cli, ["demo", "--days", "5", "--users", "6", "--calls-per-day", "40", "--db", path])
    assert result.exit_code == 0, result.output
    return path


def report_json(*args: str) -> dict:
    result = mcpmeter("report", "--format", "json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# ---- help --------------------------------------------------------------------------------------


def test_every_command_and_option_has_help():
    result = mcpmeter("--help")
    assert result.exit_code == 0
    for command in ("serve", "report", "keys", "db", "demo", "push"):
        assert command in result.stdout

    def walk(group, path):
        for name, command in group.commands.items():
            assert command.help, f"`mcpmeter {' '.join([*path, name])}` has no help text"
            for param in command.params:
                if param.param_type_name == "option" and param.name != "help":
                    assert param.help, f"`mcpmeter {' '.join([*path, name])}` option {param.opts} has no help"
            if hasattr(command, "commands"):
                walk(command, [*path, name])

    walk(cli, [])


def test_version():
    from mcpmeter import __version__

    assert __version__ in mcpmeter("--version").stdout


# ---- demo and report ---------------------------------------------------------------------------


def test_demo_fills_a_store_with_several_servers_tools_and_users(demo_db):
    r = report_json("--db", demo_db, "--period", "30d")
    assert r["calls"] > 50 and r["users"] > 1 and r["errors"] > 0
    assert len({t["server"] for t in r["tools"]}) >= 2
    assert sum(t["calls"] for t in r["tools"]) == r["calls"]


def test_report_json_csv_markdown_and_table_agree(demo_db):
    r = report_json("--db", demo_db)
    top = r["tools"][0]

    as_csv = mcpmeter("report", "--format", "csv", "--db", demo_db)
    assert as_csv.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [(row["tool"], int(row["calls"])) for row in rows] == [(t["tool"], t["calls"]) for t in r["tools"]]

    as_md = mcpmeter("report", "--format", "markdown", "--db", demo_db)
    assert as_md.exit_code == 0
    assert as_md.stdout.startswith("# MCP usage report")
    assert f"| `{top['tool']}` | {top['server']} | {top['calls']} |" in as_md.stdout
    assert "How many people use it?" in as_md.stdout and f"{r['users']} distinct users" in as_md.stdout

    as_table = mcpmeter("report", "--db", demo_db)
    assert as_table.exit_code == 0
    assert "How many people use it?" in as_table.stdout
    assert top["tool"] in as_table.stdout and str(top["calls"]) in as_table.stdout


def test_report_filters(demo_db):
    everything = report_json("--db", demo_db)
    server = everything["tools"][0]["server"]
    only = report_json("--db", demo_db, "--server", server)
    assert only["calls"] == sum(t["calls"] for t in everything["tools"] if t["server"] == server)
    assert {t["server"] for t in only["tools"]} == {server}
    tool = everything["tools"][0]["tool"]
    assert report_json("--db", demo_db, "--tool", tool)["calls"] == everything["tools"][0]["calls"]


def test_report_reads_the_default_store_and_mcpmeter_db(isolated_env, tmp_path, monkeypatch):
    assert mcpmeter("demo", "--days", "2", "--calls-per-day", "20").exit_code == 0
    assert (isolated_env / "mcpmeter.db").exists()
    assert report_json()["calls"] > 0
    monkeypatch.setenv("MCPMETER_DB", str(tmp_path / "elsewhere.db"))
    assert_friendly_error(mcpmeter("report"), "holds no mcpmeter data yet", "mcpmeter demo")


def test_report_from_a_collector(collector):
    batch = [event(tool="search"), event(tool="search"), event(tool="details", ok=False, error_type="E")]
    assert httpx.post(collector.url + "/v1/events", json=batch).json()["accepted"] == 3
    r = report_json("--url", collector.url)
    assert (r["calls"], r["errors"]) == (3, 1)
    assert {t["tool"]: t["calls"] for t in r["tools"]} == {"search": 2, "details": 1}


# ---- errors a user can see ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message", "hint"),
    [
        (["report", "--period", "fortnight"], "period 'fortnight' is not understood", "7d"),
        (["report", "--from", "last tuesday"], "is not a time", "RFC 3339"),
        (["report", "--db", "mysql://db/x"], "unknown store URL", "SQLite"),
        (["report", "--db", "postgresql://127.0.0.1:1/x"], "cannot connect to postgresql://127.0.0.1:1/x", "PostgreSQL running"),
        (["report", "--project", "nope"], "no project 'nope'", "mcpmeter demo"),
        (["keys", "revoke", "nothing-like-this"], "no active key", "keys list"),
        (["keys", "list", "--project", "nope"], "no project 'nope'", "keys list"),
        (["push"], "no collector to push to", "--url"),
    ],
)
def test_errors_are_one_line_and_a_hint(demo_db, args, message, hint):
    if "--db" not in args:
        args = [*args, "--db", demo_db]
    assert_friendly_error(mcpmeter(*args), message, hint)


def test_report_on_an_empty_store_says_what_to_do(db):
    assert_friendly_error(mcpmeter("report", "--db", db), "holds no mcpmeter data yet", "mcpmeter demo")


def test_report_from_an_unreachable_collector(db):
    from conftest import free_port

    result = mcpmeter("report", "--url", f"http://127.0.0.1:{free_port()}")
    assert_friendly_error(result, "cannot reach the collector", "mcpmeter serve")


def test_report_with_a_refused_key(collector):
    result = mcpmeter("report", "--url", collector.url, "--api-key", "mcpm_wrong")
    assert_friendly_error(result, "unknown API key", "")


def test_a_real_process_prints_no_traceback(tmp_path):
    done = subprocess.run([*MCPMETER, "report", "--period", "0h", "--db", str(tmp_path / "x.db")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), done.stderr
    assert done.stdout == ""


def test_serving_on_a_taken_port_is_one_clear_line(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([*MCPMETER, "serve", "--port", str(port), "--db", str(tmp_path / "x.db")],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use",
        "hint: is another `mcpmeter serve` running there? choose another --port"], done.stderr
    assert not (tmp_path / "x.db").exists()  # nothing was created before the check


def test_a_wrong_period_is_reported_before_the_store_is_read(tmp_path):
    done = subprocess.run([*MCPMETER, "report", "--period", "7x", "--db", str(tmp_path / "empty.db")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.startswith("error: period '7x' is not understood"), done.stderr


def test_an_invalid_setting_is_a_friendly_error(db, monkeypatch):
    monkeypatch.setenv("MCPMETER_PORT", "eighty")
    result = mcpmeter("serve", "--db", db)
    assert_friendly_error(result, "MCPMETER_PORT='eighty' is not valid", "Port")


# ---- keys --------------------------------------------------------------------------------------


def keys_json(db: str) -> list[dict]:
    result = mcpmeter("keys", "list", "--json", "--db", db)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_keys_create_list_revoke(db):
    created = mcpmeter("keys", "create", "--name", "ci", "--scopes", "ingest,read", "--db", db)
    assert created.exit_code == 0
    key = created.stdout.strip()
    assert key.startswith("mcpm_") and len(key.splitlines()) == 1  # stdout is only the key
    assert "not shown again" in created.stderr

    (listed,) = keys_json(db)
    assert (listed["name"], listed["project"], listed["scopes"], listed["state"]) == ("ci", "default", ["ingest", "read"], "active")
    assert key.startswith(listed["prefix"]) and key not in json.dumps(listed)
    table = mcpmeter("keys", "list", "--db", db)
    assert "ci" in table.stdout and key not in table.stdout

    revoked = mcpmeter("keys", "revoke", listed["prefix"] + "…", "--db", db)
    assert revoked.exit_code == 0, revoked.output
    assert keys_json(db)[0]["state"] == "revoked"


def test_keys_for_other_projects_and_expiry(db):
    assert mcpmeter("keys", "create", "--name", "a", "--project", "team-a", "--db", db).exit_code == 0
    assert mcpmeter("keys", "create", "--name", "b", "--project", "team-b", "--expires-days", "1", "--db", db).exit_code == 0
    assert [k["project"] for k in keys_json(db)] == ["team-a", "team-b"]
    only = json.loads(mcpmeter("keys", "list", "--json", "--project", "team-b", "--db", db).stdout)
    assert [k["name"] for k in only] == ["b"]


def test_a_duplicate_key_name_is_a_friendly_error(db):
    assert mcpmeter("keys", "create", "--name", "ci", "--db", db).exit_code == 0
    assert_friendly_error(mcpmeter("keys", "create", "--name", "ci", "--db", db), "a key named 'ci' already exists", "--name")


def test_an_unknown_scope_is_a_usage_error(db):
    result = mcpmeter("keys", "create", "--name", "x", "--scopes", "write", "--db", db)
    assert result.exit_code == 2
    assert "unknown scope(s) write" in result.stderr and "Traceback" not in result.output


def test_a_revoked_key_is_refused_by_a_running_collector_within_a_second(collector):
    db = str(collector.db)
    key = mcpmeter("keys", "create", "--name", "ci", "--db", db).stdout.strip()
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.post(collector.url + "/v1/events", json=[event()], headers=headers).status_code == 200
    assert mcpmeter("keys", "revoke", "ci", "--db", db).exit_code == 0
    revoked_at = time.monotonic()
    while (status := httpx.post(collector.url + "/v1/events", json=[], headers=headers).status_code) == 200:
        assert time.monotonic() - revoked_at < 1.5, "the revoked key still works"
        time.sleep(0.05)
    assert status == 401
    assert httpx.post(collector.url + "/v1/events", json=[event()], headers=headers).status_code == 401


# ---- db ----------------------------------------------------------------------------------------


def test_db_status_downgrade_and_upgrade(db):
    assert mcpmeter("demo", "--days", "1", "--calls-per-day", "10", "--db", db).exit_code == 0
    status = mcpmeter("db", "status", "--db", db)
    assert f"schema version {LATEST} (newest known: {LATEST})" in status.stdout

    down = mcpmeter("db", "downgrade", "--to", "0", "--yes", "--db", db)
    assert down.exit_code == 0 and "schema version 0" in down.stdout
    assert "schema version 0" in mcpmeter("db", "status", "--db", db).stdout
    assert_friendly_error(mcpmeter("report", "--db", db), "holds no mcpmeter data yet")

    up = mcpmeter("db", "upgrade", "--db", db)
    assert up.exit_code == 0 and f"schema version {LATEST}" in up.stdout
    assert "up to date" in mcpmeter("db", "upgrade", "--db", db).stdout
    store = open_store(db)
    try:
        assert store.schema_version() == LATEST and store.list_projects() == []
    finally:
        store.close()


def test_db_downgrade_asks_first(db):
    assert mcpmeter("db", "upgrade", "--db", db).exit_code == 0
    refused = mcpmeter("db", "downgrade", "--to", "0", "--db", db, input="n\n")
    assert_friendly_error(refused, "cancelled")
    assert f"schema version {LATEST}" in mcpmeter("db", "status", "--db", db).stdout
    assert "already at schema version" in mcpmeter("db", "downgrade", "--to", str(LATEST), "--db", db).stdout


def test_db_upgrade_to_an_unknown_version_is_a_friendly_error(db):
    assert_friendly_error(mcpmeter("db", "upgrade", "--to", str(LATEST + 1), "--db", db), f"no schema version {LATEST + 1}")


# ---- push --------------------------------------------------------------------------------------


def test_push_is_idempotent(collector, db):
    assert mcpmeter("demo", "--days", "3", "--users", "4", "--calls-per-day", "30", "--db", db).exit_code == 0
    local = report_json("--db", db, "--period", "30d")

    first = mcpmeter("push", "--url", collector.url, "--db", db)
    assert first.exit_code == 0, first.output
    store = open_store(db)
    try:
        total = sum(len(store.export_events(p.id, 0, 1_000_000)) for p in store.list_projects())
    finally:
        store.close()
    assert f"{total} new, 0 already there" in first.stderr

    second = mcpmeter("push", "--url", collector.url, "--db", db)
    assert second.exit_code == 0
    assert f"0 new, {total} already there" in second.stderr

    remote = report_json("--url", collector.url, "--period", "30d")
    assert (remote["calls"], remote["errors"], remote["users"]) == (local["calls"], local["errors"], local["users"])
    assert {t["tool"]: t["calls"] for t in remote["tools"]} == {t["tool"]: t["calls"] for t in local["tools"]}

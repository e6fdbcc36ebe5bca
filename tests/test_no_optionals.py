"""Install boundaries: the SDK works with none of the optional dependencies installed, and
every `mcpmeter` command works (or says in one line which extra it needs) on a base install."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import click

from conftest import free_port, start_collector, stop_collector

OPTIONAL = ["starlette", "uvicorn", "httpx", "click", "rich", "prometheus_client", "opentelemetry", "jwt", "mcp", "psycopg"]
# What `pip install 'mcpmeter[cli]'` does not bring: the server, mcp and postgres extras.
SERVER_EXTRAS = ["starlette", "uvicorn", "httpx", "prometheus_client", "opentelemetry", "jwt", "mcp", "psycopg"]


def run(code: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def test_the_sdk_records_to_the_local_store_without_optional_dependencies(tmp_path):
    db = tmp_path / "local.db"
    done = run(f"""
        import sys
        for name in {OPTIONAL!r}:
            sys.modules[name] = None  # any import of it now fails

        from mcpmeter import Meter

        meter = Meter(server="bare", db={str(db)!r})

        @meter.tool
        def ping():
            return "pong"

        for _ in range(3):
            ping()
        assert meter.shutdown(10)
        print(meter.stats.sent)
    """)
    assert done.stdout.strip() == "3"
    assert "Traceback" not in done.stderr and "mcpmeter:" not in done.stderr

    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(db)) as conn:
        row = conn.execute("SELECT count(*), min(tool), min(server) FROM events WHERE kind = 'tool_call'").fetchone()
    assert row == (3, "ping", "bare")


def test_the_blocking_really_blocks():
    done = subprocess.run([sys.executable, "-c", "import sys; sys.modules['click'] = None; import click"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr


def test_importing_mcpmeter_imports_no_cli_or_server_dependency():
    done = run("""
        import json, sys
        import mcpmeter
        from mcpmeter import Meter
        print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
    """)
    loaded = set(json.loads(done.stdout))
    assert "mcpmeter" in loaded
    assert not loaded & set(OPTIONAL), loaded & set(OPTIONAL)


def test_the_sdk_sends_to_a_collector_without_optional_dependencies(collector):
    done = run(f"""
        import sys
        for name in {OPTIONAL!r}:
            sys.modules[name] = None

        from mcpmeter import Meter

        meter = Meter(server="bare", url={collector.url!r})
        for _ in range(4):
            meter.record("ping")
        assert meter.shutdown(10)
        print(meter.stats.sent, meter.stats.spooled)
    """)
    assert done.stdout.split() == ["4", "0"]


# ---- the `mcpmeter` command on a base install (plus the cli extra) ---------------------------------

BLOCKING_RUNNER = """
import importlib.abc, sys

BLOCKED = set(sys.argv[1].split(","))


class Refuse(importlib.abc.MetaPathFinder):
    \"\"\"As if these distributions were not installed: every import of them fails.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


for loaded in [m for m in sys.modules if m.split(".")[0] in BLOCKED]:
    del sys.modules[loaded]
sys.meta_path.insert(0, Refuse())
sys.argv = ["mcpmeter", *sys.argv[2:]]
from mcpmeter.cli import main

main()
"""

OK, EXTRA = "ok", "extra"

# Every command, in an order that gives each one something to work on; with what it must do.
COMMANDS: list[tuple[tuple[str, ...], list[str], str]] = [
    (("db", "upgrade"), [], OK),
    (("db", "status"), [], OK),
    (("db", "sql"), [], OK),
    (("demo",), ["--days", "2", "--users", "3", "--calls-per-day", "20"], EXTRA),  # it drives real MCP servers
    (("report",), ["--period", "7d"], OK),
    (("keys", "create"), ["--name", "ci", "--scopes", "ingest,read", "--require-signature"], OK),
    (("keys", "list"), [], OK),
    (("keys", "rotate"), ["ci", "--overlap", "1h"], OK),
    (("keys", "revoke"), ["ci"], OK),
    (("access", "grant"), ["Alice@Example.com", "--project", "default", "--role", "admin"], OK),
    (("access", "list"), [], OK),
    (("access", "revoke"), ["alice@example.com", "--project", "default"], OK),
    (("users", "hash"), ["alice"], OK),
    (("users", "delete"), ["--user", "alice", "--yes"], OK),
    (("audit",), [], OK),
    (("push",), ["--url", "{collector}"], OK),
    (("proxy",), ["--server-name", "bare", "--", sys.executable, "-c", "import sys; sys.stdin.read()"], OK),
    (("db", "prune"), [], OK),
    (("serve",), ["--port", "0"], EXTRA),
    (("proxy",), ["--upstream", "http://127.0.0.1:9/mcp", "--listen", "127.0.0.1:{port}"], EXTRA),
    (("mcp",), [], EXTRA),
    (("mcp",), ["--http", "--port", "0"], EXTRA),
    (("db", "downgrade"), ["--to", "0", "--yes"], OK),
]
NEEDS = {"serve": "server", "proxy": "server", "mcp": "mcp", "demo": "mcp"}


def leaf_commands(group: click.Group, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    found = set()
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found |= leaf_commands(command, (*path, name))
        else:
            found.add((*path, name))
    return found


def mcpmeter_blocked(blocked: list[str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKING_RUNNER, ",".join(blocked), *args], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL, cwd=cwd)


def test_the_list_below_covers_every_command():
    from mcpmeter.cli.main import cli

    assert leaf_commands(cli) == {path for path, _, _ in COMMANDS}


def test_every_command_runs_without_the_server_extras(tmp_path, monkeypatch):
    """Store-only commands succeed on a SQLite store; serving commands name their extra in one line."""
    collector = start_collector(tmp_path / "collector.db")  # for `push` (a full install, another process)
    try:
        _run_every_command(tmp_path, collector.url, monkeypatch)
    finally:
        stop_collector(collector)


def _run_every_command(tmp_path: Path, collector_url: str, monkeypatch) -> None:
    monkeypatch.setenv("MCPMETER_DB", str(tmp_path / "base.db"))
    run(f"""
        from mcpmeter import Meter
        meter = Meter(server="bare", user="ann", db={str(tmp_path / "base.db")!r})
        for ok in (True, True, False):
            meter.record("ping", duration_ms=1.0, ok=ok)
        assert meter.shutdown(10)
    """)  # something for report and push (the demo needs the server and mcp extras)
    for path, args, outcome in COMMANDS:
        argv = [*path, *(a.replace("{collector}", collector_url).replace("{port}", str(free_port())) for a in args)]
        done = mcpmeter_blocked(SERVER_EXTRAS, *argv, cwd=tmp_path)
        shown = f"`mcpmeter {' '.join(argv)}`:\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, shown
        if outcome == OK:
            assert done.returncode == 0, shown
        else:
            extra = NEEDS[path[0]]
            assert done.returncode == 1, shown
            assert done.stderr.splitlines() == [
                f"error: `mcpmeter {path[0]}` needs the {extra} extra: pip install 'mcpmeter[{extra}]'"], shown


def test_admin_commands_on_a_base_install_audit_in_their_transaction(tmp_path):
    db = str(tmp_path / "audited.db")
    for argv in (["keys", "create", "--name", "gw", "--project", "team"], ["keys", "revoke", "gw"],
                 ["access", "grant", "ann@example.com", "--project", "team"], ["users", "delete", "--user", "x", "--project", "team", "--yes"]):
        done = mcpmeter_blocked(SERVER_EXTRAS, *argv, "--db", db, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    done = mcpmeter_blocked(SERVER_EXTRAS, "audit", "--json", "--db", db, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    entries = json.loads(done.stdout)
    assert [e["action"] for e in entries] == ["project.create", "key.create", "key.revoke", "access.grant", "user.delete"]
    assert {e["project"] for e in entries} == {"team"} and {e["source"] for e in entries} == {"cli"}


def test_the_command_without_the_cli_extra_says_what_to_install(tmp_path):
    done = mcpmeter_blocked([*SERVER_EXTRAS, "click", "rich"], "keys", "list", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.splitlines() == ["error: the mcpmeter command needs the cli extra: pip install 'mcpmeter[cli]'"]

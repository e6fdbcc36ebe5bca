"""The recorder SDK works with none of the server-side dependencies installed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

OPTIONAL = ["starlette", "uvicorn", "httpx", "click", "rich", "prometheus_client", "opentelemetry"]


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

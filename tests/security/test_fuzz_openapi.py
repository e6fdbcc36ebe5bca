"""Schemathesis against a real collector's /openapi.json: every check, a bounded number of
examples per operation (so the run stays well under a minute), with an admin key.

No answer may be a 5xx or break the document (status codes, content types, headers,
response schemas), schema-violating requests must be refused and schema-valid ones
accepted. Two things a JSON schema cannot say are configured rather than hidden:
- the collector's event time window is relative to now, so the fuzzed collector accepts
  any time (MCPMETER_MAX_EVENT_AGE_DAYS / MCPMETER_MAX_CLOCK_SKEW_SECONDS wide open); the
  window itself is tested in tests/collector/test_ingest.py;
- a usage window needs `from` before `to` and at most 400 days: a 400 with a reason is a
  right answer to a schema-valid pair that breaks that (positive_data_acceptance).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_keys, start_collector, stop_collector
from mcpmeter.storage import open_store

EXAMPLES = int(os.environ.get("MCPMETER_FUZZ_EXAMPLES", "40"))
CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]
"""


def schemathesis() -> list[str]:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    assert found, "schemathesis is part of the test extra: pip install -e '.[test]'"
    return [found]


@pytest.mark.slow
def test_fuzzing_the_openapi_document_finds_nothing(tmp_path):
    db = tmp_path / "fuzz.db"
    store = open_store(str(db))
    keys = make_keys(store)
    store.close()
    c = start_collector(db, env={"MCPMETER_LOCAL_TRUST": "false", "MCPMETER_RATE_LIMIT_PER_KEY": "0",
                                 "MCPMETER_RATE_LIMIT_PER_IP": "0", "MCPMETER_MAX_EVENT_AGE_DAYS": "4000000",
                                 "MCPMETER_RETENTION_DAYS": "4000000",  # events older than the retention are refused
                                 "MCPMETER_MAX_CLOCK_SKEW_SECONDS": "300000000000"})
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    try:
        result = subprocess.run(
            [*schemathesis(), "--config-file", str(tmp_path / "schemathesis.toml"), "run", f"{c.url}/openapi.json", "--checks", "all",
             "--max-examples", str(EXAMPLES),
             "--seed", os.environ.get("MCPMETER_FUZZ_SEED", "8890"), "--workers", "1", "--no-color",
             "-H", f"Authorization: Bearer {keys.admin}"],
            capture_output=True, text=True, timeout=150, cwd=tmp_path, env={**os.environ, "NO_COLOR": "1"})
        report = result.stdout + result.stderr
        assert result.returncode == 0, report[-6000:]
        assert "failures" not in report.split("SUMMARY")[-1].lower() or " 0 failures" in report, report[-3000:]
        assert "5xx" not in report.split("SUMMARY")[-1]
    finally:
        stop_collector(c)
    assert "Traceback" not in c.log.read_text(), c.log.read_text()[-3000:]

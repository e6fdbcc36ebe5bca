"""Helpers shared by the benchmarks: medians, machine facts, tables, JSON results.

Benchmarks are not tests: they print figures and ratios against a reference measured in
the same run, and never assert timings.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def median(values) -> float:
    return statistics.median(values)


def machine() -> dict:
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }


def machine_line() -> str:
    m = machine()
    return f"{m['nproc']} CPUs, {m['implementation']} {m['python']}, {m['platform']}"


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: str | None, data: dict) -> None:
    if path:
        Path(path).write_text(json.dumps({"machine": machine(), **data}, indent=2))


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, port: int, logfile: Path, timeout: float = 30.0) -> None:
    """Return once the collector on ``port`` answers /ready; exit the benchmark if it dies or hangs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mcpmeter serve exited with {proc.returncode}:\n{logfile.read_text()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/ready")
            if conn.getresponse().status == 200:
                conn.close()
                return
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"mcpmeter serve did not become ready:\n{logfile.read_text()}")

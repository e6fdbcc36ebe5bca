"""Helpers shared by the benchmarks: medians, machine facts, tables, JSON results.

Benchmarks are not tests: they print figures and ratios against a reference measured in
the same run, and never assert timings.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
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

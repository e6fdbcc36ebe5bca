"""A summary as a terminal table, JSON, CSV or Markdown."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

FORMATS = ("table", "json", "csv", "markdown")
_BLOCKS = " ▁▂▃▄▅▆▇█"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.0f} ms" if value >= 10 else f"{value:.2f} ms"


def sparkline(values: list[int]) -> str:
    top = max(values, default=0)
    if not top:
        return ""
    return "".join(_BLOCKS[min(8, round(v / top * 8))] for v in values)


def bar(share: float, width: int = 20) -> str:
    full = round(share * width)
    return "█" * full + "·" * (width - full)


def headline(s: dict[str, Any]) -> list[tuple[str, str]]:
    """The four stakeholder questions, answered in one line each."""
    top = s["tools"][0] if s["tools"] else None
    return [
        ("How many people use it?", f"{s['users']} distinct users"),
        ("What is popular?", f"{top['tool']}: {top['calls']} calls ({top['share'] * 100:.0f}%)" if top else "no calls yet"),
        ("Is it working?", f"{_pct(s['success_rate'])} success, p50 {_ms(s['latency_ms']['p50'])}, p95 {_ms(s['latency_ms']['p95'])}"),
        ("What happened recently?", f"{s['calls_last_7d']} calls in the last 7 days"),
    ]


def to_json(s: dict[str, Any]) -> str:
    return json.dumps(s, indent=2)


TOOL_COLUMNS = ("server", "tool", "calls", "share", "errors", "success_rate", "users", "p50_ms", "p95_ms", "p99_ms", "last_used")


def to_csv(s: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(TOOL_COLUMNS)
    for t in s["tools"]:
        writer.writerow(["" if t[c] is None else t[c] for c in TOOL_COLUMNS])
    return out.getvalue()


def to_markdown(s: dict[str, Any], title: str = "MCP usage report") -> str:
    lines = [f"# {title}", "", f"{s['from']} → {s['to']}" + (f" · project `{s['project']}`" if s.get("project") else ""), ""]
    lines += ["| Question | Answer |", "|---|---|"] + [f"| {q} | {a} |" for q, a in headline(s)] + [""]
    lines += ["## Tools", "", "| Tool | Calls | Share | Success | Users | p50 | p95 |", "|---|---:|---|---:|---:|---:|---:|"]
    for t in s["tools"]:
        lines.append(
            f"| `{t['tool']}` ({t['server']}) | {t['calls']} | `{bar(t['share'], 10)}` {t['share'] * 100:.0f}% "
            f"| {_pct(t['success_rate'])} | {t['users']} | {_ms(t['p50_ms'])} | {_ms(t['p95_ms'])} |"
        )
    if s["daily"]:
        lines += ["", "## Calls per day", "", "```", sparkline([d["calls"] for d in s["daily"]]),
                  f"{s['daily'][0]['day']} … {s['daily'][-1]['day']}", "```"]
    return "\n".join(lines) + "\n"


def print_table(s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]mcpmeter[/] · {s['from']} → {s['to']}" + (f" · project {s['project']}" if s.get("project") else ""))
    for question, answer in headline(s):
        console.print(f"  [dim]{question:<26}[/] [bold]{answer}[/]")
    if s["daily"]:
        console.print(f"  [dim]{'Calls per day':<26}[/] {sparkline([d['calls'] for d in s['daily']])}")
    table = Table(show_edge=False, header_style="bold")
    for column, justify in (("Tool", "left"), ("Server", "left"), ("Calls", "right"), ("Share", "left"),
                            ("Success", "right"), ("Users", "right"), ("p50", "right"), ("p95", "right")):
        table.add_column(column, justify=justify, no_wrap=column != "Tool", overflow="fold")
    for t in s["tools"]:
        table.add_row(t["tool"], t["server"], str(t["calls"]), f"{bar(t['share'], 8)} {t['share'] * 100:3.0f}%",
                      _pct(t["success_rate"]), str(t["users"]), _ms(t["p50_ms"]), _ms(t["p95_ms"]))
    console.print(table)

"""A report as a terminal view, JSON, CSV or Markdown (charts drawn in text)."""

from __future__ import annotations

from typing import Any

from ..analytics.exports import bar, headline, ms, pct, sparkline, to_json, to_markdown
from ..analytics.questions import QUESTIONS

# The formatting helpers and the file formats live in analytics/exports.py (the HTTP exports,
# the dashboard's export button and the MCP server use them too); re-exported here.
__all__ = ["CSV_TABLES", "FORMATS", "bar", "headline", "ms", "pct", "print_table", "sparkline", "to_csv", "to_json",
           "to_markdown"]

FORMATS = ("table", "json", "csv", "markdown")
CSV_TABLES = ("tools", "timeseries", "errors", "clients")


def to_csv(r: dict[str, Any], table: str = "tools") -> str:
    """One table of a report as CSV (the tables the registry declares for ``report``)."""
    return QUESTIONS["report"].export(r, "csv", table)


def print_table(r: dict[str, Any]) -> None:
    import sys

    from rich import box
    from rich.console import Console, JustifyMethod
    from rich.table import Table

    # Piped output has no terminal width to fit; use a width that keeps the table on one line.
    console = Console(width=None if sys.stdout.isatty() else 110)
    console.print(f"[bold]mcpmeter[/] · {r['from']} → {r['to']}" + (f" · project {r['project']}" if r.get("project") else ""))
    for question, answer in headline(r):
        console.print(f"  [dim]{question:<26}[/] [bold]{answer}[/]")
    if r["timeseries"]:
        unit = "hour" if r.get("grain") == "hour" else "day"
        console.print(f"  [dim]{'Calls per ' + unit:<26}[/] {sparkline([p['calls'] for p in r['timeseries']])}")
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1), header_style="bold")
    columns: tuple[tuple[str, JustifyMethod], ...] = (("Tool", "left"), ("Server", "left"), ("Calls", "right"), ("Share", "left"),
                                                     ("Success", "right"), ("Users", "right"), ("p50", "right"), ("p95", "right"))
    for column, justify in columns:
        table.add_column(column, justify=justify, no_wrap=True, overflow="ellipsis", min_width=len(column) if column != "Tool" else 8)
    for t in r["tools"]:
        table.add_row(t["tool"], t["server"], str(t["calls"]), f"{t['share'] * 100:.0f}%",
                      pct(t["success_rate"]), str(t["users"]), ms(t["p50_ms"]), ms(t["p95_ms"]))
    console.print(table)
    if r.get("never_called"):
        console.print("  [dim]Listed, not called:[/] " + ", ".join(t["tool"] for t in r["never_called"]))
    if r.get("error_types"):
        console.print("  [dim]Top errors:[/] " + "; ".join(f"{e['tool'] or '–'} {e['error_type']} ×{e['count']}" for e in r["error_types"][:5]))

"""A report as a terminal view, JSON, CSV or Markdown (charts drawn in text)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

FORMATS = ("table", "json", "csv", "markdown")
CSV_TABLES = ("tools", "timeseries", "errors", "clients")
_BLOCKS = " ▁▂▃▄▅▆▇█"


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.0f} ms" if value >= 10 else f"{value:.2f} ms"


def _delta(value: float | None, points: bool = False) -> str:
    if value is None:
        return ""
    if points:
        return f" ({value * 100:+.1f} pts)"
    return f" ({value * 100:+.0f}%)"


def sparkline(values: list[int]) -> str:
    top = max(values, default=0)
    if not top:
        return ""
    return "".join(_BLOCKS[min(8, round(v / top * 8))] for v in values)


def bar(share: float, width: int = 20) -> str:
    full = round(share * width)
    return "█" * full + "·" * (width - full)


def headline(r: dict[str, Any]) -> list[tuple[str, str]]:
    """The four stakeholder questions, answered in one line each."""
    top = r["tools"][0] if r["tools"] else None
    change = r.get("change", {})
    lat = r["latency_ms"]
    return [
        ("How many people use it?", f"{r['users']} distinct users{_delta(change.get('users'))}, "
                                    f"{r['new_users']} new, {r['returning_users']} returning"),
        ("What is popular?", f"{top['tool']}: {top['calls']} calls ({top['share'] * 100:.0f}% of {r['calls']})" if top else "no calls yet"),
        ("Is it working?", f"{pct(r['success_rate'])} success{_delta(change.get('success_rate'), True)}, "
                           f"p50 {ms(lat['p50'])}, p95 {ms(lat['p95'])}, p99 {ms(lat['p99'])}"),
        ("What happened recently?", f"{r['calls_last_7d']} calls in the last 7 days; {r['calls']} in this period{_delta(change.get('calls'))}"),
    ]


def to_json(r: dict[str, Any]) -> str:
    return json.dumps(r, indent=2)


_CSV_COLUMNS = {
    "tools": ("server", "tool", "calls", "share", "errors", "success_rate", "users", "p50_ms", "p95_ms", "p99_ms", "last_used"),
    "timeseries": ("t", "calls", "errors", "users", "p95_ms"),
    "errors": ("server", "tool", "error_type", "count", "share", "last_seen"),
    "clients": ("client", "calls", "share", "errors", "users"),
}
_CSV_SOURCE = {"tools": "tools", "timeseries": "timeseries", "errors": "error_types", "clients": "clients"}


def to_csv(r: dict[str, Any], table: str = "tools") -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = _CSV_COLUMNS[table]
    writer.writerow(columns)
    for row in r[_CSV_SOURCE[table]]:
        writer.writerow(["" if row.get(c) is None else row[c] for c in columns])
    return out.getvalue()


def to_markdown(r: dict[str, Any], title: str = "MCP usage report") -> str:
    scope = f" · project `{r['project']}`" if r.get("project") else ""
    filters = ", ".join(f"{k} `{v}`" for k, v in (r.get("filters") or {}).items() if v)
    lines = [f"# {title}", "", f"**{r['from']} → {r['to']}**{scope}" + (f" · {filters}" if filters else ""), ""]
    lines += ["| Question | Answer |", "|---|---|"] + [f"| {q} | {a} |" for q, a in headline(r)] + [""]
    if r["timeseries"]:
        unit = "hour" if r.get("grain") == "hour" else "day"
        lines += [f"## Calls per {unit}", "", "```", sparkline([p["calls"] for p in r["timeseries"]]),
                  f"{r['timeseries'][0]['t']} … {r['timeseries'][-1]['t']}  (peak {max(p['calls'] for p in r['timeseries'])})", "```", ""]
    lines += ["## Tools", "", "| Tool | Server | Calls | Share | Success | Users | p50 | p95 |", "|---|---|---:|---|---:|---:|---:|---:|"]
    for t in r["tools"]:
        lines.append(f"| `{t['tool']}` | {t['server']} | {t['calls']} | `{bar(t['share'], 10)}` {t['share'] * 100:.0f}% "
                     f"| {pct(t['success_rate'])} | {t['users']} | {ms(t['p50_ms'])} | {ms(t['p95_ms'])} |")
    if r.get("never_called"):
        lines += ["", "Listed but not called in this period: " + ", ".join(f"`{t['tool']}` ({t['server']})" for t in r["never_called"])]
    if r.get("error_types"):
        lines += ["", "## Errors", "", "| Tool | Error | Count | Share |", "|---|---|---:|---:|"]
        for e in r["error_types"][:10]:
            lines.append(f"| `{e['tool'] or '–'}` | {e['error_type']} | {e['count']} | {e['share'] * 100:.0f}% |")
    if r.get("clients"):
        lines += ["", "## Clients", "", "| Client | Calls | Share | Users |", "|---|---:|---|---:|"]
        for c in r["clients"]:
            lines.append(f"| {c['client']} | {c['calls']} | `{bar(c['share'], 10)}` {c['share'] * 100:.0f}% | {c['users']} |")
    return "\n".join(lines) + "\n"


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

"""Answers of the usage questions as files: JSON, CSV and Markdown.

One home for every export, whoever asks: ``GET /v1/usage/<question>?format=csv`` (or
``Accept: text/csv``), the dashboard's export button (the same URLs), ``mcpmeter report
--format csv|markdown`` and the MCP server's Markdown report.

What a question can export is declared with it in the registry (``questions.py``): the
tables of its answer (``Question.tables``), each one list of the answer; a CSV file holds one
table (``table=``, default the first), with nested fields flattened to dotted columns
(``latency_ms.p95``) and lists written as JSON. Markdown is the stakeholder report for
``report`` (the four questions answered in one line each, then the tables) and, for every
other question, its scalar figures followed by each of its tables.

This module needs no web framework: the CLI imports it on a base install.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

FORMATS = ("json", "csv", "markdown")
MEDIA_TYPES = {"json": "application/json", "csv": "text/csv; charset=utf-8", "markdown": "text/markdown; charset=utf-8"}
EXTENSIONS = {"json": "json", "csv": "csv", "markdown": "md"}
_BLOCKS = " ▁▂▃▄▅▆▇█"


@dataclass(frozen=True)
class Table:
    """One list of an answer that a CSV file can hold: ``name`` (what ``table=`` says), ``key``
    (the answer's field; None: the answer's own figures as one row) and ``columns`` (None: every
    field of the rows, nested ones flattened)."""

    name: str
    key: str | None = None
    columns: tuple[str, ...] | None = None

    def rows(self, answer: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        if self.key is None:
            return [{k: v for k, v in answer.items() if not isinstance(v, list) and k != "filters"}]
        return answer.get(self.key) or []


# ---- small text helpers (the terminal table, Markdown and the MCP server share them) -----------


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


def headline(r: Mapping[str, Any]) -> list[tuple[str, str]]:
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


# ---- tables -----------------------------------------------------------------------------------


def _flatten(row: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def table_of(table: Table, answer: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The header and the cells of one table of an answer."""
    rows = [_flatten(r) for r in table.rows(answer)]
    columns = list(table.columns) if table.columns is not None else list(dict.fromkeys(c for r in rows for c in r))
    return columns, [[_cell(r.get(c)) for c in columns] for r in rows]


def to_csv(answer: Mapping[str, Any], table: Table) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns, cells = table_of(table, answer)
    if not columns:
        return ""  # an empty list: no rows, and no columns to name
    writer.writerow(columns)
    writer.writerows(_safe(row) for row in cells)
    return out.getvalue()


def _safe(row: Iterable[str]) -> list[str]:
    """Cells a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@`` first) are quoted with
    ``'`` (tool names and error messages come from the recorded servers), numbers excepted."""
    return [f"'{c}" if c[:1] in ("=", "+", "-", "@", "\t", "\r") and not _number(c) else c for c in row]


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: Sequence[str], cells: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(_md(c) for c in columns) + " |", "|" + "---|" * len(columns),
            *("| " + " | ".join(_md(c) for c in row) + " |" for row in cells)]


# ---- documents --------------------------------------------------------------------------------


def _scope_line(r: Mapping[str, Any]) -> str:
    scope = f" · project `{r['project']}`" if r.get("project") else ""
    filters = ", ".join(f"{k} `{v}`" for k, v in (r.get("filters") or {}).items() if v)
    return f"**{r['from']} → {r['to']}**{scope}" + (f" · {filters}" if filters else "")


def to_markdown(r: Mapping[str, Any], title: str = "MCP usage report") -> str:
    """The stakeholder report (the ``report`` question's answer)."""
    lines = [f"# {title}", "", _scope_line(r), ""]
    lines += ["| Question | Answer |", "|---|---|"] + [f"| {q} | {a} |" for q, a in headline(r)] + [""]
    if r["timeseries"]:
        unit = "hour" if r.get("grain") == "hour" else "day"
        lines += [f"## Calls per {unit}", "", "```", sparkline([p["calls"] for p in r["timeseries"]]),
                  f"{r['timeseries'][0]['t']} … {r['timeseries'][-1]['t']}  (peak {max(p['calls'] for p in r['timeseries'])})", "```", ""]
    lines += ["## Tools", "", "| Tool | Server | Calls | Share | Success | Users | p50 | p95 |", "|---|---|---:|---|---:|---:|---:|---:|"]
    for t in r["tools"]:
        lines.append(f"| `{_md(t['tool'])}` | {_md(t['server'])} | {t['calls']} | `{bar(t['share'], 10)}` {t['share'] * 100:.0f}% "
                     f"| {pct(t['success_rate'])} | {t['users']} | {ms(t['p50_ms'])} | {ms(t['p95_ms'])} |")
    if r.get("never_called"):
        lines += ["", "Listed but not called in this period: " + ", ".join(f"`{_md(t['tool'])}` ({_md(t['server'])})" for t in r["never_called"])]
    if r.get("error_types"):
        lines += ["", "## Errors", "", "| Tool | Error | Count | Share |", "|---|---|---:|---:|"]
        for e in r["error_types"][:10]:
            lines.append(f"| `{_md(e['tool'] or '–')}` | {_md(e['error_type'])} | {e['count']} | {e['share'] * 100:.0f}% |")
    if r.get("clients"):
        lines += ["", "## Clients", "", "| Client | Calls | Share | Users |", "|---|---:|---|---:|"]
        for c in r["clients"]:
            lines.append(f"| {_md(c['client'])} | {c['calls']} | `{bar(c['share'], 10)}` {c['share'] * 100:.0f}% | {c['users']} |")
    return "\n".join(lines) + "\n"


def generic_markdown(title: str, answer: Mapping[str, Any], tables: Sequence[Table]) -> str:
    """Any other answer: its figures, then each of its tables."""
    lines = [f"# {title}", "", _scope_line(answer), ""]
    figures = _flatten({k: v for k, v in answer.items()
                        if k not in ("from", "to", "grain", "filters", "project") and not isinstance(v, list)})
    if figures:
        lines += [*markdown_table(("Figure", "Value"), [(k, _cell(v)) for k, v in figures.items()]), ""]
    for table in tables:
        if table.key is None:
            continue
        columns, cells = table_of(table, answer)
        lines += [f"## {table.name.replace('_', ' ').capitalize()}", ""]
        lines += (markdown_table(columns, cells) if cells else ["(none)"]) + [""]
    return "\n".join(lines)


def to_json(r: Mapping[str, Any]) -> str:
    return json.dumps(r, indent=2)

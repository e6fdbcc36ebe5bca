"""The readable half of each tool result: short Markdown an agent can quote as is.

The structured half is the JSON answer itself; these texts say the same thing in fewer
tokens, with the window and filters first so a model never mistakes what was counted.
"""

from __future__ import annotations

from typing import Any

from ..cli.render import bar, ms, pct, sparkline

MAX_ROWS = 15  # table rows in a text; the structured content always has them all


def scope(a: dict[str, Any]) -> str:
    filters = ", ".join(f"{k} `{v}`" for k, v in (a.get("filters") or {}).items() if v)
    project = f" · project `{a['project']}`" if a.get("project") else ""
    return f"{a['from']} → {a['to']}{project}" + (f" · {filters}" if filters else "")


def _share(share: float) -> str:
    return f"{share * 100:.0f}%"


def tools_text(a: dict[str, Any], shown: list[dict[str, Any]]) -> str:
    lines = [f"**Tools by calls** · {scope(a)}", "", f"{a['calls']} calls in all."]
    if shown:
        lines += ["", "| # | Tool | Server | Calls | Share | Errors | Success | Users | p50 | p95 | Last used |",
                  "|---:|---|---|---:|---|---:|---:|---:|---:|---:|---|"]
        for i, t in enumerate(shown, 1):
            lat = t["latency_ms"]
            lines.append(f"| {i} | `{t['tool']}` | {t['server']} | {t['calls']} | `{bar(t['share'], 10)}` {_share(t['share'])} "
                         f"| {t['errors']} | {pct(t['success_rate'])} | {t['users']} | {ms(lat['p50'])} | {ms(lat['p95'])} "
                         f"| {t['last_used'] or '–'} |")
    more = len(a["tools"]) - len(shown)
    if more > 0:
        lines.append(f"\n…and {more} more tool(s) with fewer calls.")
    if a.get("never_called"):
        lines += ["", "Listed but never called in this period: "
                  + ", ".join(f"`{t['tool']}` ({t['server']})" for t in a["never_called"])]
    return "\n".join(lines) + "\n"


def errors_text(a: dict[str, Any]) -> str:
    lines = [f"**Errors** · {scope(a)}", "", f"{a['errors']} failed call(s)."]
    if a["types"]:
        lines += ["", "| Tool | Server | Error type | Count | Share | Last seen |", "|---|---|---|---:|---:|---|"]
        for e in a["types"][:MAX_ROWS]:
            lines.append(f"| `{e['tool'] or '–'}` | {e['server']} | {e['error_type'] or 'unknown'} | {e['count']} "
                         f"| {_share(e['share'])} | {e['last_seen']} |")
        if len(a["types"]) > MAX_ROWS:
            rest = a["types"][MAX_ROWS:]
            lines.append(f"\n…and {len(rest)} rarer error type(s) with {sum(e['count'] for e in rest)} failure(s) in all.")
    if a["recent"]:
        lines += ["", "Most recent failures:"]
        for r in a["recent"]:
            message = (r["error_message"] or "").replace("\n", " ")
            lines.append(f"- {r['ts']} `{r['tool'] or r['kind']}` ({r['server']}): {r['error_type'] or 'error'}"
                         + (f" — {message[:200]}" if message else "") + (f" · client {r['client']}" if r.get("client") else ""))
    return "\n".join(lines) + "\n"


def timeseries_text(a: dict[str, Any]) -> str:
    points = a["points"]
    total = sum(p["calls"] for p in points)
    unit = "hour" if a["grain"] == "hour" else "day"
    lines = [f"**Calls per {unit}** · {scope(a)}", "", f"{total} calls, {sum(p['errors'] for p in points)} errors in "
             f"{len(points)} {unit}s."]
    if total:
        peak = max(points, key=lambda p: p["calls"])
        lines += ["", "```", sparkline([p["calls"] for p in points]), "```", f"Peak: {peak['calls']} calls at {peak['t']}."]
    shown = points if len(points) <= MAX_ROWS * 2 else [p for p in points if p["calls"]]
    if len(shown) < len(points):
        lines += ["", f"{unit.capitalize()}s without calls are left out of the table."]
    lines += ["", f"| {unit.capitalize()} | Calls | Errors | Success | Users | p95 |", "|---|---:|---:|---:|---:|---:|"]
    for p in shown:
        lines.append(f"| {p['t']} | {p['calls']} | {p['errors']} | {pct(p['success_rate'])} | {p['users']} | {ms(p['p95_ms'])} |")
    return "\n".join(lines) + "\n"


def clients_text(a: dict[str, Any]) -> str:
    lines = [f"**Clients** · {scope(a)}", ""]
    if not a["clients"]:
        return "\n".join([*lines, "No calls in this period."]) + "\n"
    lines += ["| Client | Calls | Share | Errors | Users |", "|---|---:|---|---:|---:|"]
    for c in a["clients"]:
        lines.append(f"| {c['client']} | {c['calls']} | `{bar(c['share'], 10)}` {_share(c['share'])} | {c['errors']} | {c['users']} |")
    if a["versions"]:
        lines += ["", "Client versions (sessions): " + ", ".join(
            f"{v['client']} {v['version'] or '?'} ×{v['sessions']}" for v in a["versions"])]
    if a["protocol_versions"]:
        lines += ["Protocol versions (sessions): " + ", ".join(
            f"{p['protocol_version']} ×{p['sessions']}" for p in a["protocol_versions"])]
    return "\n".join(lines) + "\n"


def _dist(d: dict[str, Any], unit: str = "") -> str:
    if not d["count"]:
        return "–"
    return f"avg {d['avg']}{unit}, p50 {d['p50']}{unit}, p95 {d['p95']}{unit}, max {d['max']}{unit}"


def sessions_text(a: dict[str, Any]) -> str:
    hs = a["handshake_ms"]
    lines = [f"**Sessions** · {scope(a)}", "", f"{a['sessions']} session(s) started in this period.", "",
             f"- Length: {_dist(a['length_seconds'], ' s')}",
             f"- Calls per session: {_dist(a['calls_per_session'])}",
             f"- Distinct tools per session: {_dist(a['tools_per_session'])}",
             f"- initialize → tools/list: {_dist(hs['initialize_to_list_tools'], ' ms')}",
             f"- tools/list → first tools/call: {_dist(hs['list_tools_to_call_tool'], ' ms')}",
             f"- initialize → first tools/call: {_dist(hs['initialize_to_call_tool'], ' ms')}"]
    return "\n".join(lines) + "\n"

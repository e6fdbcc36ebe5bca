"""``meter.add_usage_report_tool(server)``: the four stakeholder questions as a tool of the owner's own server.

The tool owner seed wants every user of the server to be able to ask "how is it doing?" from
inside it (its ``weblab_usage_report``). One opt-in line adds that tool to an mcp 2.x
``MCPServer`` or a FastMCP server; nothing is added otherwise (it changes ``tools/list``).

The tool reads the team collector (``MCPMETER_URL``) with a read key (``MCPMETER_READ_KEY``,
else the read key a local ``mcpmeter serve`` saved for that URL) and answers, for the meter's
server: how many people use it, what is popular, is it working, and recent activity. When the
collector cannot be reached it answers from this machine's spool and local store, and says so;
without ``MCPMETER_URL`` it answers from the local store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import settings
from ..exceptions import ConfigError, MCPMeterError, Unreachable

if TYPE_CHECKING:
    from .meter import Meter

DESCRIPTION = ("Usage report of the {server} MCP server for stakeholders: how many people use it, what is popular, "
               "whether it is working (success rate, latency) and recent activity. `period`: 1h, 6h, 12h, 1d, 7d, 30d "
               "or 90d (default 7d).")
TOP = 3


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def text(summary: dict[str, Any], server: str, where: str) -> str:
    """The four answers, in the seed's words, from a ``summary`` answer."""
    tools = summary.get("tools") or []
    popular = "; ".join(f"{t['tool']}: {t['calls']} calls ({t['share'] * 100:.0f}%)" for t in tools[:TOP]) or "no calls yet"
    p95 = (summary.get("latency_ms") or {}).get("p95")
    lines = [
        f"Usage of {server} · {summary['from']} → {summary['to']} · {where}",
        f"- How many people are using it? → {summary['users']} unique users ({summary.get('new_users', 0)} new)",
        f"- What's popular? → {popular}",
        f"- Is it working? → {_pct(summary.get('success_rate'))} success rate over {summary['calls']} calls"
        + (f", p95 {p95:g} ms" if p95 is not None else ""),
        f"- Recent activity? → {summary.get('calls_last_7d', 0)} calls in the last 7 days",
    ]
    return "\n".join(lines)


def answer(meter: Meter, url: str | None, api_key: str | None, period: str) -> str:
    """The tool's answer (blocking: it runs in a worker thread)."""
    from ..analytics import questions

    params: dict[str, str | None] = {"period": period, "server": meter.server}
    try:
        if url:
            from ..client import get_json

            try:
                summary = get_json(url, questions.QUESTIONS["summary"].path, params, api_key, timeout=15.0)
                return text(summary, meter.server, f"all users, from the team collector ({summary.get('project', '')})")
            except Unreachable as exc:
                from .. import undelivered

                meter.flush(5.0)  # this process's latest calls: spooled now, so counted below

                local = undelivered.answer("summary", url, params, db=meter._db, spool=meter._spool_path, reason=str(exc))
                if not local["source"]["spooled_events"] and not local["source"]["local_store_events"]:
                    raise
                return (text(local, meter.server, "THIS MACHINE ONLY: the collector cannot be reached")
                        + f"\n({local['source']['spooled_events']} calls wait in this machine's spool; the team's figures "
                          "come back with the collector)")
        return _local(meter, params)
    except MCPMeterError as exc:
        return f"The usage report is not available: {exc}" + (f" ({exc.hint})" if exc.hint else "")


def _local(meter: Meter, params: dict[str, str | None]) -> str:
    from ..analytics import questions
    from ..storage import open_store

    meter.flush(5.0)  # this process's latest calls: in the store now
    win = questions.window_of(params)
    store = open_store(meter._db)
    try:
        project = store.ensure_project("default")
        summary = questions.ask(store, questions.QUESTIONS["summary"], questions.query_for(project.id, win, params))
    finally:
        store.close()
    return text(summary, meter.server, "this machine's local store (no MCPMETER_URL)")


def add(meter: Meter, server: Any, name: str, url: str | None, api_key: str | None) -> Any:
    from .integrations import _framework

    framework = _framework(server)
    if framework is None or type(server).__name__ == "Server":
        raise ConfigError(f"add_usage_report_tool() cannot add a tool to a {type(server).__qualname__}",
                          hint="pass an mcp 2.x MCPServer or a FastMCP server (a low-level Server has no tool registry)")
    if meter.disabled:
        return server
    url = url or settings.get("MCPMETER_URL")
    key = api_key or settings.get("MCPMETER_READ_KEY")

    async def usage_report(period: str = "7d") -> str:
        import anyio

        return await anyio.to_thread.run_sync(answer, meter, url, key, period)

    description = DESCRIPTION.format(server=meter.server)
    if framework == "fastmcp":
        server.tool(usage_report, name=name, description=description)
    else:
        server.add_tool(usage_report, name=name, description=description)
    return server

"""`mcpmeter mcp`: an MCP server whose tools answer "how is our server doing?".

Every tool returns the JSON answer as structured content and a short Markdown text of
the same answer. A wrong argument, an unknown server or tool, or a collector that cannot
be reached comes back as a tool error that says what to do; the server itself keeps
running. Nothing here writes to stdout: in stdio mode it belongs to the protocol.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import threading
from collections.abc import Callable
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field, WithJsonSchema

from .. import __version__
from ..analytics.periods import NAMED_PERIODS
from ..analytics.questions import DIMENSIONS, PERIOD, QUESTIONS
from ..cli.render import headline, to_markdown
from ..exceptions import MCPMeterError
from . import text
from .sources import Params, Source

log = logging.getLogger("mcpmeter.mcp")

INSTRUCTIONS = """\
Usage analytics for MCP servers, recorded by mcpmeter: who uses them, which tools are popular,
whether calls succeed and how fast they are, and what happened recently.
Start with `usage_report` (period 7d unless asked otherwise); drill down with `top_tools`,
`tool_errors`, `usage_timeseries`, `clients`, `sessions`, `tool_categories`, `activation` and
`usage_actions`. Every answer states the exact window (UTC, whole hours or days) it covers;
quote it when reporting numbers. The success rate counts tool and server errors against the
calls; caller errors (a wrong request, a tool that does not exist) and cancelled calls are
reported apart and do not count."""

Granularity = Annotated[Literal["hour", "day"] | None, Field(description="Bucket size. Default: hour for periods up to 2 days, else day. "
                                                                          "Hourly points are offered for periods up to 7 days.")]

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
MAX_HOURLY_POINTS = 7 * 24


def explain(exc: MCPMeterError) -> str:
    return f"{exc}" + (f". Hint: {exc.hint}" if exc.hint else "")


def result(answer: dict[str, Any], readable: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=readable)], structured_content=answer)


# Questions of the registry that are not tools: summary is a resource; the rest are for the dashboard and the API.
NOT_TOOLS = frozenset({"summary", "users", "measurements", "server-events"})
# Each tool's question and the filters it leaves out, as ``asks`` declared them (tests compare it with the registry).
ASKED: dict[str, tuple[str, frozenset[str]]] = {}


def _filter_arguments() -> dict[str, inspect.Parameter]:
    """The registry's filters as tool arguments: the period (a window ending now) and every dimension."""
    period = Annotated[str, WithJsonSchema({"type": "string", "pattern": r"^[0-9]{1,4}[mhdw]$", "examples": list(NAMED_PERIODS)}),
                       Field(description=PERIOD.description)]
    args = {PERIOD.name: inspect.Parameter(PERIOD.name, inspect.Parameter.KEYWORD_ONLY, default=PERIOD.default, annotation=period)}
    for d in DIMENSIONS:
        args[d.name] = inspect.Parameter(d.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                         annotation=Annotated[str | None, Field(description=d.description)])
    return args


FILTER_ARGUMENTS = _filter_arguments()


def asks(question: str, *, without: frozenset[str] = frozenset()) -> Callable[[Callable[..., CallToolResult]], Callable[..., CallToolResult]]:
    """A tool that answers ``question``: it takes the registry's filters (but ``without``) and its own arguments.

    The decorated function receives the filters as one ``params`` dict (the registry's names, ready for
    ``Source.ask``), then its own arguments; the tool's signature, which the MCP SDK turns into the input
    schema, is the filters followed by those arguments.
    """
    assert question in QUESTIONS and question not in NOT_TOOLS, question

    def decorate(fn: Callable[..., CallToolResult]) -> Callable[..., CallToolResult]:
        filters = {name: p for name, p in FILTER_ARGUMENTS.items() if name not in without}
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               for name, p in inspect.signature(fn, eval_str=True).parameters.items() if name != "params"]

        @functools.wraps(fn)
        def tool(**arguments: Any) -> CallToolResult:
            params = {name: arguments.pop(name) for name in filters}
            return fn(params, **arguments)

        tool.__signature__ = inspect.Signature([*filters.values(), *own], return_annotation=CallToolResult)  # type: ignore[attr-defined]
        ASKED[fn.__name__] = (question, without)
        return tool

    return decorate


class Answers:
    """Questions to a source, with the checks every tool shares (filters that name nothing)."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self._known: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def ask(self, question: str, params: Params) -> dict[str, Any]:
        try:
            answer = self.source.ask(question, params)
            server, tool = params.get("server"), params.get("tool")
            if server is not None or tool is not None:
                self._check_names(server, tool)
            return answer
        except MCPMeterError as exc:
            log.info("%s(%s) failed: %s", question, params.get("period"), exc)
            raise ToolError(explain(exc)) from None

    def _check_names(self, server: str | None, tool: str | None) -> None:
        """An unknown server or tool is almost always a typo: say so, and list the names that exist."""

        def matches(known: set[tuple[str, str]]) -> bool:
            return any((server is None or s == server) and (tool is None or t == tool) for s, t in known)

        if matches(self._known):
            return
        with self._lock:  # the catalog grows as data arrives: look again before calling a name unknown
            self._known = self.source.catalog()
        if matches(self._known):
            return
        servers = sorted({s for s, _ in self._known})
        if server is not None and server not in servers:
            raise MCPMeterError(f"unknown server {server!r}",
                                hint=f"servers with recorded usage: {', '.join(servers) or 'none yet'}")
        tools = sorted({t for s, t in self._known if server is None or s == server})
        where = f" on server {server!r}" if server else ""
        raise MCPMeterError(f"unknown tool {tool!r}{where}", hint=f"tools seen{where}: {', '.join(tools) or 'none yet'}")


def _grain_for(period: str, granularity: str | None) -> str | None:
    if granularity != "hour":
        return granularity
    from ..analytics.periods import period_ms

    try:
        span = period_ms(period)
    except MCPMeterError:
        return granularity  # the query reports the bad period
    if span > MAX_HOURLY_POINTS * 3_600_000:
        raise ToolError(f"hourly points are offered for periods up to 7d ({MAX_HOURLY_POINTS} points), not {period}. "
                        "Hint: use granularity=day, or a shorter period")
    return granularity


def build_server(source: Source) -> MCPServer:
    """The MCP server, its tools, resources and prompt, reading from ``source``."""
    answers = Answers(source)
    mcp = MCPServer("mcpmeter", title="mcpmeter usage analytics", version=__version__, instructions=INSTRUCTIONS,
                    log_level="WARNING")

    @mcp.tool(title="Usage report", annotations=READ_ONLY)
    @asks("report")
    def usage_report(params: Params) -> CallToolResult:
        """How is it doing? The stakeholder report for a period: distinct users (new and returning),
        calls and their change against the previous period of the same length, success rate,
        latency p50/p95/p99, the tools by popularity, error types and clients. Start here.
        Text: a compact Markdown report; structured content: every figure as JSON plus the headline answers."""
        report = answers.ask("report", params)
        report["headline"] = [{"question": q, "answer": a} for q, a in headline(report)]
        return result(report, to_markdown(report, title="MCP usage report"))

    @mcp.tool(title="Top tools", annotations=READ_ONLY)
    @asks("tools", without=frozenset({"tool"}))
    def top_tools(params: Params,
                  limit: Annotated[int, Field(ge=1, le=200, description="How many tools to return, most called first.")] = 10,
                  ) -> CallToolResult:
        """Which tools are popular? Tools ranked by calls, each with its share of all calls, errors,
        success rate, distinct users, latency (p50/p95/p99/avg, ms) and when it was last used;
        also the tools a server lists that nobody called in the period."""
        a = answers.ask("tools", params)
        shown = a["tools"][:limit]
        return result({**a, "tools": shown, "tools_total": len(a["tools"])}, text.tools_text(a, shown))

    @mcp.tool(title="Tool errors", annotations=READ_ONLY)
    @asks("errors")
    def tool_errors(params: Params,
                    recent: Annotated[int, Field(ge=0, le=20, description="How many of the latest failures to include, with their messages.")] = 10,
                    ) -> CallToolResult:
        """Is it working? Failed calls grouped by tool and error type (count, share of all errors,
        last seen), and the most recent failures with their error messages and clients."""
        a = answers.ask("errors", params)
        a["recent"] = a["recent"][:recent]
        return result(a, text.errors_text(a))

    @mcp.tool(title="Usage over time", annotations=READ_ONLY)
    @asks("timeseries")
    def usage_timeseries(params: Params, granularity: Granularity = None) -> CallToolResult:
        """Trends: per hour or per day, calls, errors, success rate, distinct users, latency
        p50/p95/p99, and calls of the most used tools. Every bucket of the window is present,
        empty ones with zero calls."""
        grain = _grain_for(str(params["period"]), granularity)
        a = answers.ask("timeseries", {**params, "grain": grain})
        return result(a, text.timeseries_text(a))

    @mcp.tool(title="Clients", annotations=READ_ONLY)
    @asks("clients", without=frozenset({"client"}))
    def clients(params: Params) -> CallToolResult:
        """Who calls from where? MCP clients (Claude Desktop, Claude Code, Cursor, …) by calls, share,
        errors and distinct users; client versions and protocol versions by sessions."""
        a = answers.ask("clients", params)
        return result(a, text.clients_text(a))

    @mcp.tool(title="Sessions", annotations=READ_ONLY)
    @asks("sessions")
    def sessions(params: Params) -> CallToolResult:
        """How do sessions go? Sessions started in the period: how long they last, calls and
        distinct tools per session, and handshake latencies (initialize → tools/list → first tools/call)."""
        a = answers.ask("sessions", params)
        return result(a, text.sessions_text(a))

    @mcp.tool(title="Tool categories", annotations=READ_ONLY)
    @asks("categories")
    def tool_categories(params: Params) -> CallToolResult:
        """Which kinds of tools are used? Calls, share, errors, success rate, distinct users and
        tools per tool category (as the server records it, e.g. read / write); tools without one
        are counted under none."""
        a = answers.ask("categories", params)
        return result(a, text.categories_text(a))

    @mcp.tool(title="Activation", annotations=READ_ONLY)
    @asks("activation")
    def activation(params: Params) -> CallToolResult:
        """Do clients that connect go on to use it? Per server, of the sessions (or, without sessions,
        users) first seen in the period: how many opened (initialize / server/discover), listed the
        tools, and called one; those that never called a tool (probes, crawlers: not counted as users)
        and their clients; and what each listed tool costs in context (its definition's bytes and an
        estimate in tokens, bytes / 4) beside its calls: tools that cost context and earn nothing."""
        a = answers.ask("activation", params)
        return result(a, text.activation_text(a))

    @mcp.tool(title="Other usage actions", annotations=READ_ONLY)
    @asks("actions", without=frozenset({"tool", "category"}))
    def usage_actions(params: Params) -> CallToolResult:
        """What else do people do? Events of other kinds the servers record (e.g. page_view,
        installation): counts per server and action, distinct users per action."""
        a = answers.ask("actions", params)
        return result(a, text.actions_text(a))

    def resource_json(question: str, period: str) -> str:
        try:
            return json.dumps(answers.ask(question, {"period": period}), indent=2)
        except ToolError as exc:
            raise ResourceError(str(exc)) from None

    @mcp.resource("mcpmeter://summary/7d", name="summary-7d", title="Usage summary, last 7 days",
                  mime_type="application/json")
    def summary_7d() -> str:
        """Users, calls, success rate, latency, top tools and the change against the previous 7 days."""
        return resource_json("summary", "7d")

    @mcp.resource("mcpmeter://summary/{period}", name="summary", title="Usage summary for a period",
                  mime_type="application/json")
    def summary_for(period: str) -> str:
        """The usage summary for any period: 1h, 6h, 12h, 1d, 7d, 30d, 90d."""
        return resource_json("summary", period)

    @mcp.resource("mcpmeter://tools", name="tools", title="Tools, last 7 days", mime_type="application/json")
    def tools_list() -> str:
        """Every tool with its calls, errors, users and latency in the last 7 days, and the tools listed but never called."""
        return resource_json("tools", "7d")

    @mcp.prompt(title="Weekly adoption report")
    def weekly_adoption_report(
        server: Annotated[str | None, Field(description="Only this MCP server; omit for all.")] = None,
        audience: Annotated[str, Field(description="Who reads the report.")] = "stakeholders",
    ) -> str:
        """Write this week's adoption report for stakeholders from the usage tools."""
        where = f"the MCP server `{server}`" if server else "our MCP servers"
        arg = f', server="{server}"' if server else ""
        return f"""Write a weekly adoption report on {where} for {audience}.

Gather the facts with the mcpmeter tools first:
1. `usage_report(period="7d"{arg})`: users (new and returning), calls, success rate, latency, and the change against the previous 7 days.
2. `usage_timeseries(period="7d", granularity="day"{arg})`: the day-by-day trend.
3. `top_tools(period="7d"{arg})`, and `top_tools(period="30d"{arg})` for context: what is popular, what is never called.
4. `tool_errors(period="7d"{arg})`: what fails, and how often.
5. `clients(period="7d"{arg})`: which MCP clients people use.

Then write the report in Markdown, at most one page:
- **Headline**: one or two sentences: is adoption growing, and is the server working well?
- **Adoption**: distinct users, new vs returning, calls; each with its change week over week.
- **What people use**: the top tools with their share of calls; tools nobody called.
- **Reliability and speed**: success rate, p95 latency, the main error types and the tools they hit.
- **Clients**: the clients in use.
- **Recommended actions**: two or three concrete next steps backed by the numbers.

Use only numbers the tools returned, state the dates the week covers (from the answers' `from`/`to`),
and say plainly when there is too little data to draw a conclusion."""

    return mcp

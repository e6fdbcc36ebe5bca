"""The ``mcpmeter proxy`` command (registered with the others in ``mcpmeter.cli.main``)."""

from __future__ import annotations

import logging
import os
import sys

import click

from .. import settings
from ..cli.options import friendly
from ..exceptions import MCPMeterError

USER_FROM_HELP = (
    "HTTP only: who the user of a request is. `header:NAME` takes a request header "
    "(e.g. header:X-User-Id); `jwt:CLAIM` takes a claim of the Authorization bearer token's "
    "JWT payload (e.g. jwt:sub) - decoded WITHOUT verifying the signature, so only use it "
    "behind something that verifies tokens. Default: no user (a session id is not a user). "
    "Users are stored as keyed hashes, never raw."
)


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--server-name", default=None, metavar="NAME",
              help="Server name to record (default MCPMETER_SERVER_NAME, else the name the server "
                   "reports in its handshake, else the command's basename / the upstream host).")
@click.option("--upstream", default=None, metavar="URL",
              help="Proxy a streamable-HTTP MCP server at URL (e.g. http://127.0.0.1:8000/mcp) instead of a command.")
@click.option("--listen", default="127.0.0.1:8891", show_default=True, metavar="HOST:PORT",
              help="With --upstream: where the proxy listens. Clients use the same path as the upstream URL.")
@click.option("--user-from", default=None, metavar="SOURCE", help=USER_FROM_HELP)
@click.option("--url", default=None, help="Collector to send events to (default MCPMETER_URL; unset: the local store).")
@click.option("--api-key", default=None, help="Ingest key for --url (default MCPMETER_API_KEY).")
@click.option("--db", metavar="PATH", default=None,
              help="Local store when no collector is set (default MCPMETER_DB, else mcpmeter.db in MCPMETER_HOME).")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]), help="Our log messages (always on stderr).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def proxy(server_name, upstream, listen, user_from, url, api_key, db, log_level, command) -> None:
    """Record the traffic of any MCP server without changing it.

    \b
    stdio:  mcpmeter proxy [--server-name NAME] -- CMD ARGS...
            runs CMD as a child and passes stdin/stdout through byte for byte.
    HTTP:   mcpmeter proxy --upstream http://127.0.0.1:8000/mcp --listen 127.0.0.1:8891
            a streamable-HTTP reverse proxy (JSON and SSE responses streamed as they come).

    Records tool calls (tool, duration, success, error type and message, sizes),
    tools/list, the initialize or server/discover handshake (client name and version,
    protocol version, server name and version), sessions and cancellations. Events go to
    MCPMETER_URL when set (spooled while it is down), else to the local store.
    """
    friendly(_run)(server_name, upstream, listen, user_from, url, api_key, db, log_level, command)


def _run(server_name, upstream, listen, user_from, url, api_key, db, log_level, command) -> None:
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per forwarded request is noise
    server_name = settings.get("MCPMETER_SERVER_NAME", server_name)
    if upstream:
        if command:
            raise click.UsageError("give either --upstream URL or a command after --, not both")
        from .http import parse_listen, parse_user_source, serve

        host, port = parse_listen(listen)
        serve(upstream, host, port, server_name=server_name, user_source=parse_user_source(user_from),
              url=url, api_key=api_key, db=db, log_level=log_level)
        return
    if not command:
        raise click.UsageError("nothing to run: give the server command after --, e.g. "
                               "`mcpmeter proxy -- uvx mcp-server-time`, or --upstream URL for an HTTP server")
    if user_from:
        raise MCPMeterError("--user-from only applies to --upstream (HTTP)",
                            hint="over stdio the user is MCPMETER_USER, else the OS user")
    from ..sdk.meter import Meter
    from .stdio import StdioProxy
    from .tracker import Tracker

    fallback = os.path.basename(command[0]) or command[0]
    meter = Meter(server=server_name or fallback, db=db, url=url, api_key=api_key, transport="stdio")
    tracker = Tracker(meter, transport="stdio", server=server_name, fallback_server=fallback)
    sys.exit(StdioProxy(command, tracker).run())

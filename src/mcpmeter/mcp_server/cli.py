"""The `mcpmeter mcp` command (registered on the main CLI group in cli/main.py).

Kept free of the MCP SDK at import time so `mcpmeter --help` stays fast and works without
the mcp extra; `mcpmeter mcp` without it says, in one line, which extra to install.
"""

from __future__ import annotations

import logging
import socket
import sys

import click

from .. import settings
from ..cli.options import friendly
from ..exceptions import ConfigError, MissingExtra

DEFAULT_HTTP_PORT = 8891


@click.command("mcp")
@click.option("--http", "use_http", is_flag=True, help="Serve streamable HTTP (at /mcp) instead of stdio.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind with --http. Beyond loopback, clients must send a read key (Authorization: Bearer).")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_HTTP_PORT, show_default=True,
              help="Port with --http (0 picks a free one; the address is printed on stderr).")
@click.option("--url", default=None, help="Read from a collector instead of a store (default MCPMETER_URL).")
@click.option("--api-key", default=None, help="Read key for --url (default MCPMETER_API_KEY).")
@click.option("--project", default=None, help="Project to answer for (store only; a collector answers for its key's project). [default: default]")
@click.option("--db", metavar="PATH", default=None, help="Store: SQLite file path (default: MCPMETER_DB, else mcpmeter.db in MCPMETER_HOME).")
@click.option("--log-level", default="warning", show_default=True, type=click.Choice(["debug", "info", "warning", "error"]),
              help="Logging on stderr.")
def mcp(use_http: bool, host: str, port: int, url: str | None, api_key: str | None, project: str | None,
        db: str | None, log_level: str) -> None:
    """An MCP server whose tools answer usage questions.

    \b
    Lets any agent answer "how is our server doing this week?": tools usage_report,
    top_tools, tool_errors, usage_timeseries, clients and sessions; resources
    mcpmeter://summary/7d and mcpmeter://tools; prompt weekly_adoption_report.
    Speaks stdio by default (for Claude Desktop, Cursor, Claude Code), or streamable
    HTTP with --http. Reads the local store, or a collector with --url and a read key.
    """
    friendly(run)(use_http, host, port, url, api_key, project, db, log_level)


def run(use_http: bool, host: str, port: int, url: str | None, api_key: str | None, project: str | None,
        db: str | None, log_level: str) -> None:
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from .server import build_server
    except ImportError as exc:  # not installed, or a version without what we use
        if (exc.name or "").split(".")[0] not in ("mcp", "mcp_types", "pydantic"):
            raise
        raise MissingExtra("`mcpmeter mcp`", "mcp") from None

    source = open_source(url, api_key, project, db)
    try:
        server = build_server(source)
        if use_http:
            serve_http(server, source, host, port)
        else:
            click.echo(f"mcpmeter MCP server on stdio, answering from the {source.label}", err=True)
            server.run("stdio")
    except KeyboardInterrupt:
        pass
    finally:
        source.close()


def open_source(url: str | None, api_key: str | None, project: str | None, db: str | None):
    from .sources import CollectorSource, StoreSource

    if url and db:
        raise ConfigError("give --db or --url, not both", hint="--db reads a local store; --url reads a collector")
    url = url if db else settings.get("MCPMETER_URL", url)
    if url:
        if project is not None:
            raise ConfigError("--project applies to a local store", hint="a collector answers for the project of its read key")
        return CollectorSource(url, settings.get("MCPMETER_API_KEY", api_key))
    from ..storage import open_store

    return StoreSource(open_store(db, upgrade=False), project or "default")


def serve_http(server, source, host: str, port: int) -> None:
    """Check that clients can authenticate, bind, announce the address, then serve: a client that
    reads the announcement can connect at once (the kernel queues it until uvicorn accepts).
    Every request passes ``http.KeyGuard`` (a read key, or a keyless caller on this machine)."""
    import uvicorn

    from .http import KeyGuard, check_listen

    check_listen(host, source)
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", hint="pick another --port (0 picks a free one)") from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    app = KeyGuard(server.streamable_http_app(host=host), source, host)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    click.echo(f"mcpmeter MCP server on http://{shown}:{bound}/mcp, answering from the {source.label}", err=True)
    uvicorn.Server(config).run(sockets=[sock])

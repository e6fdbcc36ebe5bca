"""`mcpmeter`: run the collector, read reports, manage keys and the store."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from .. import __version__, settings
from ..exceptions import MCPMeterError
from ..mcp_server.cli import mcp
from ..proxy.cli import proxy
from .keys import keys
from .options import db_option, friendly, open_store
from .security import access, audit_command, users


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="mcpmeter")
def cli() -> None:
    """Usage analytics for MCP servers.

    \b
    Record:  Meter(server=...) in Python, or `mcpmeter proxy` in front of any server.
    Collect: `mcpmeter serve` (collector, API, dashboard) on 127.0.0.1:8890.
    Ask:     `mcpmeter report` for users, popular tools, success rate and latency.
    """


# ---- serve -------------------------------------------------------------------------------


@cli.command()
@click.option("--host", default=None, help="Address to bind (default MCPMETER_HOST, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default MCPMETER_PORT, 8890).")
@db_option
@click.option("--demo", is_flag=True, help="Fill an empty store with demo data first (recorded from real MCP traffic: `mcpmeter demo`).")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]), show_default=True,
              help="How much the collector logs (to stderr).")
@click.option("--metrics-port", type=int, default=None,
              help="Also serve /metrics (only) on this port, e.g. 9465 (default MCPMETER_METRICS_PORT, off).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Collector processes sharing the port. They share nothing but the store: use a postgresql:// store "
                   "for more write throughput (on SQLite they take turns writing).")
@friendly
def serve(host: str | None, port: int | None, db: str | None, demo: bool, log_level: str, metrics_port: int | None,
          workers: int) -> None:
    """Run the collector: ingest and usage APIs, the web dashboard at /, /metrics and health endpoints."""
    import logging

    from ..server.collector import CollectorConfig, create_app
    from ..server.collector.bootstrap import ensure_local_keys, register_env_keys, register_metrics_key
    from ..server.exporters.serve import run

    host = settings.get("MCPMETER_HOST", host)
    port = settings.get("MCPMETER_PORT", port)
    metrics_port = settings.get("MCPMETER_METRICS_PORT", metrics_port)
    for taken in (port, metrics_port):
        if taken:
            _require_free_port(host, taken)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    store = open_store(db)
    local_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', 'localhost') else host}:{port}"
    created = ensure_local_keys(store, local_url)
    env_keys = register_env_keys(store)
    metrics_key = register_metrics_key(store)
    if demo and store.count_events(_everything(store)) == 0:
        try:
            _fill_demo(store, what="the demo (`serve --demo`)")
        except MCPMeterError as exc:  # the collector still starts, on the empty store
            click.echo(f"no demo data: {exc}" + (f" ({exc.hint})" if exc.hint else ""), err=True)
    click.echo(f"mcpmeter {__version__} collector on {local_url}  (store: {store.url})", err=True)
    if created:
        click.echo("created API keys for project 'default' (saved for local use; `mcpmeter keys list`)", err=True)
    if env_keys:
        click.echo(f"registered ingest keys from the environment: {', '.join(env_keys)}", err=True)
    if metrics_key:
        click.echo("registered the read key MCPMETER_METRICS_KEY as `metrics` (for Prometheus)", err=True)
    if workers > 1:
        from ..server.collector.factory import run_workers

        if metrics_port is not None:
            raise MCPMeterError("--metrics-port works with one worker only", hint="scrape /metrics on the main port instead")
        store.close()  # each worker opens its own
        run_workers(db, host, port, workers, log_level)
        return
    config = CollectorConfig()
    config.metrics.port = metrics_port
    run(create_app(store, config), host, port, metrics_port, log_level)


def _require_free_port(host: str, port: int) -> None:
    """Fail with one clear line, before any start-up work, when the address is taken."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise MCPMeterError(f"cannot resolve --host {host}: {exc}", hint="use an address such as 127.0.0.1 or 0.0.0.0") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise MCPMeterError(f"cannot listen on {host}:{port}: {exc.strerror}",
                                hint="is another `mcpmeter serve` running there? choose another --port") from None


def _everything(store):
    from ..storage.base import EventFilter

    project = store.ensure_project("default")
    return EventFilter(project.id, 0, 1 << 62)


def _fill_demo(store, what: str = "`mcpmeter demo`", **options: Any) -> int:
    """Fill ``store`` with demo data recorded from real MCP traffic, showing progress on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .. import demo

    demo.require(what)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True, console=_stderr_console()) as progress:
        task = progress.add_task("Demo: planning", total=None)

        def show(stage: str, done: int, total: int) -> None:
            what = "tool calls through real MCP servers" if stage == "capturing" else "events into the store"
            progress.update(task, description=f"Demo: {stage} {what}", completed=done, total=total)

        total = demo.fill(store, progress=show, **options)
    click.echo(f"added {total} demo events to {store.url}, recorded from real MCP traffic (see docs/dashboard.md)", err=True)
    return total


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


# ---- report ------------------------------------------------------------------------------


def filter_options(fn: Callable) -> Callable:
    """The usage filters of the registry (analytics/questions.py) as options: --period, --from, --to, --server, …"""
    from ..analytics.questions import FILTERS

    for p in reversed(FILTERS):
        fn = click.option(f"--{p.name}", p.name, default=p.default, show_default=p.default is not None, help=p.description)(fn)
    return fn


@cli.command()
@filter_options
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv", "markdown"]), default="table", show_default=True,
              help="table for a terminal, json for programs, csv for spreadsheets, markdown for a wiki or PR.")
@click.option("--csv-table", type=click.Choice(["tools", "timeseries", "errors", "clients", "categories", "actions", "activation"]),
              default="tools", show_default=True,
              help="Which table --format csv writes.")
@click.option("--url", default=None, help="Read from a collector instead of a store (default MCPMETER_URL).")
@click.option("--api-key", default=None, help="Read key for --url (default MCPMETER_API_KEY).")
@click.option("--project", default="default", show_default=True, help="Project to report on (store only).")
@db_option
@friendly
def report(fmt: str, csv_table: str, url: str | None, api_key: str | None, project: str, db: str | None,
           **filters: str | None) -> None:
    """Who uses it, what is popular, is it working, what happened recently.

    With a collector (--url / MCPMETER_URL) that cannot be reached, the answer is this machine's
    data (its spool and local store), labelled so."""
    from ..analytics.questions import QUESTIONS
    from . import render

    url = url if db else settings.get("MCPMETER_URL", url)
    if url:
        from ..client import get_json
        from ..exceptions import Unreachable

        try:
            data = get_json(url, QUESTIONS["report"].path, filters, settings.get("MCPMETER_API_KEY", api_key))
        except Unreachable as exc:  # the tool owner seed's "local fallback always works"
            from .. import undelivered

            data = undelivered.answer("report", url, filters, project=project, reason=str(exc))
            source = data["source"]
            if not source["spooled_events"] and not source["local_store_events"]:
                raise  # nothing of this machine's either: the collector's absence is the answer
            click.echo(f"{exc}\nshowing THIS MACHINE'S data only: {source['spooled_events']} calls waiting in the spool "
                       f"(undelivered) and {source['local_store_events']} in the local store - not the team's figures",
                       err=True)
    else:
        data = _local_report(db, project, filters)
    output: dict[str, Callable[[dict[str, Any]], Any]] = {
        "json": lambda s: click.echo(render.to_json(s)),
        "csv": lambda s: click.echo(render.to_csv(s, csv_table), nl=False),
        "markdown": lambda s: click.echo(render.to_markdown(s), nl=False),
        "table": render.print_table,
    }
    output[fmt](data)


def _local_report(db: str | None, project_name: str, filters: dict[str, str | None]) -> dict[str, Any]:
    from ..analytics import questions
    from ..storage import open_store

    report = questions.QUESTIONS["report"]
    win = questions.window_of(filters)  # a wrong period is reported before anything is opened
    store = open_store(db, upgrade=False)
    try:
        _require_schema(store)
        project = store.project_by_name(project_name)
        if project is None:
            raise MCPMeterError(f"no project {project_name!r} in {store.url}", hint="nothing recorded yet? `mcpmeter demo` fills a store with sample data")
        data = questions.ask(store, report, questions.query_for(project.id, win, filters))
        return {"project": project.name, **data}
    finally:
        store.close()


def _require_schema(store) -> None:
    if store.schema_version() == 0:
        raise MCPMeterError(f"{store.url} holds no mcpmeter data yet", hint="record something first, or run `mcpmeter demo`")


# ---- db ----------------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """Schema migrations of the store."""


@db.command("upgrade")
@click.option("--to", "target", type=int, default=None, help="Target version (default: newest).")
@db_option
@friendly
def db_upgrade(target, db) -> None:
    """Apply migrations up to the newest (or --to) version."""

    store = open_store(db, upgrade=False)
    applied = store.upgrade(target)
    click.echo(f"{store.url}: schema version {store.schema_version()}" + (f" (applied {', '.join(map(str, applied))})" if applied else " (up to date)"))


@db.command("downgrade")
@click.option("--to", "target", type=click.IntRange(min=0), required=True, help="Version to go back to (0 removes everything).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@db_option
@friendly
def db_downgrade(target, yes, db) -> None:
    """Revert migrations above --to. Data in dropped tables is lost."""

    store = open_store(db, upgrade=False)
    current = store.schema_version()
    if target >= current:
        click.echo(f"{store.url}: already at schema version {current}")
        return
    if not yes and not click.confirm(f"Revert {store.url} from version {current} to {target}? Tables of later versions are dropped", default=False):
        raise MCPMeterError("cancelled")
    reverted = store.downgrade(target)
    click.echo(f"{store.url}: schema version {store.schema_version()} (reverted {', '.join(map(str, reverted))})")


@db.command("prune")
@click.option("--retention-days", type=click.IntRange(min=1), default=None, help="Keep raw events this many days (default MCPMETER_RETENTION_DAYS, 180).")
@click.option("--rollup-retention-days", type=click.IntRange(min=1), default=None,
              help="Keep rollups this many days (default MCPMETER_ROLLUP_RETENTION_DAYS, 730).")
@db_option
@friendly
def db_prune(retention_days, rollup_retention_days, db) -> None:
    """Delete data past its retention (for cron; a running collector also prunes hourly)."""
    from ..retention import prune

    store = open_store(db)
    removed = prune(store, retention_days, rollup_retention_days)
    click.echo(f"{store.url}: removed " + ", ".join(f"{n} {table}" for table, n in removed.items() if n) if any(removed.values())
               else f"{store.url}: nothing to prune")


@db.command("sql")
@click.option("--from", "start", type=click.IntRange(min=0), default=0, show_default=True,
              help="The schema version the database is at (0: empty).")
@click.option("--to", "end", type=click.IntRange(min=1), default=None, help="Version to go to (default: the newest).")
@click.option("--down", is_flag=True, help="Print the reverse: from --to back to --from.")
@friendly
def db_sql(start: int, end: int | None, down: bool) -> None:
    """Print the PostgreSQL DDL (tables, row-level security, the mcp_usage_hourly/daily views and
    mcp_usage_summary()) for a SQL editor; the same as `mcpmeter db upgrade` runs."""
    from ..storage.postgres_migrations import MIGRATIONS, script

    newest = MIGRATIONS[-1].version
    end = newest if end is None else end
    if end > newest or start >= end:
        raise MCPMeterError(f"nothing between versions {start} and {end}", hint=f"versions go from 1 to {newest}; "
                            "--from is the version the database is at")
    click.echo(script(start, end, down), nl=False)


@db.command("status")
@db_option
@friendly
def db_status(db) -> None:
    """Show the store and its schema version."""
    from ..storage.sqlite_migrations import MIGRATIONS

    store = open_store(db, upgrade=False)
    click.echo(f"{store.url}: schema version {store.schema_version()} (newest known: {MIGRATIONS[-1].version})")


# ---- push, demo -----------------------------------------------------------------------------


@cli.command()
@click.option("--url", default=None, help="Collector to upload to (default MCPMETER_URL).")
@click.option("--api-key", default=None, help="Ingest key (default MCPMETER_API_KEY).")
@click.option("--project", default="default", show_default=True, help="Local project to upload.")
@db_option
@friendly
def push(url, api_key, project, db) -> None:  # signs with MCPMETER_SIGNING_SECRET when set
    """Upload a local store's history to a team collector (idempotent: safe to repeat)."""
    from ..push import push_store

    url = settings.get("MCPMETER_URL", url)
    if not url:
        raise MCPMeterError("no collector to push to", hint="pass --url https://collector.example:8890 or set MCPMETER_URL")
    accepted, duplicates = push_store(db, project, url, settings.get("MCPMETER_API_KEY", api_key))
    click.echo(f"pushed to {url}: {accepted} new, {duplicates} already there", err=True)


@cli.command()
@click.option("--days", type=click.IntRange(1, 180), default=90, show_default=True, help="Days of history, ending now.")
@click.option("--users", type=click.IntRange(1, 100_000), default=40, show_default=True, help="Distinct (fake) users.")
@click.option("--calls-per-day", type=click.IntRange(1, 5_000), default=60, show_default=True,
              help="Tool calls on a busy weekday (each one really made, so this sets how long the demo takes).")
@click.option("--seed", type=int, default=7, show_default=True, help="Random seed: the same seed gives the same plan.")
@db_option
@friendly
def demo(days, users, calls_per_day, seed, db) -> None:
    """Fill a store with data recorded from real MCP traffic.

    Real MCP servers, driven by the MCP SDK's client (several clients, both protocol
    generations), measured through the real capture paths (`mcpmeter proxy`,
    meter.instrument, @meter.tool), then re-timed into the past. Needs mcpmeter[server,mcp].
    """
    store = open_store(db)
    _fill_demo(store, days=days, users=users, calls_per_day=calls_per_day, seed=seed)


# ---- every subcommand, registered in one place ------------------------------------------------

for command in (keys, proxy, mcp, audit_command, access, users):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="mcpmeter")

"""What every `mcpmeter` command shares: errors as one line, the --db option, the store, projects.

Imported by the command modules (cli/main.py, cli/keys.py, cli/security.py, proxy/cli.py,
mcp_server/cli.py); it imports none of them, so there is no import cycle to work around.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import click

from .. import admin
from ..exceptions import MCPMeterError, MissingExtra, ValidationError
from ..storage.base import Project

F = TypeVar("F", bound=Callable[..., Any])

DB_HELP = "Store: SQLite file path or postgresql:// URL (default: MCPMETER_DB, else mcpmeter.db in MCPMETER_HOME)."

# The top-level module of an optional dependency -> the extra that installs it.
EXTRA_OF = {
    "starlette": "server", "uvicorn": "server", "httpx": "server", "prometheus_client": "server",
    "opentelemetry": "server", "google": "server", "jwt": "server", "cryptography": "server",
    "psycopg": "postgres", "psycopg_pool": "postgres",
    "mcp": "mcp", "pydantic": "mcp",
    "click": "cli", "rich": "cli", "pygments": "cli", "markdown_it": "cli", "mdurl": "cli",
}


def missing_extra(exc: ModuleNotFoundError, what: str) -> MissingExtra | None:
    """The one-line error for an import that failed because an extra is not installed (else None)."""
    extra = EXTRA_OF.get((exc.name or "").split(".")[0])
    return MissingExtra(what, extra) if extra else None


def friendly(fn: F) -> F:
    """Turn our errors into one line plus a hint, exit code 1; never a traceback.

    A ``ValidationError`` naming one of the command's parameters is a usage error of that
    parameter (exit code 2); a missing optional dependency names the extra to install."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ModuleNotFoundError as exc:
            ctx = click.get_current_context(silent=True)
            error = missing_extra(exc, f"`{ctx.command_path if ctx else 'mcpmeter'}`")
            if error is None:
                raise
            click.echo(f"error: {error}", err=True)
            sys.exit(1)
        except MCPMeterError as exc:
            ctx = click.get_current_context(silent=True)
            if isinstance(exc, ValidationError) and exc.field and ctx is not None:
                for param in ctx.command.params:
                    if param.name == exc.field:
                        raise click.BadParameter(str(exc), ctx, param) from None
            click.echo(f"error: {exc}", err=True)
            if exc.hint:
                click.echo(f"hint: {exc.hint}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def db_option(fn: F) -> F:
    return click.option("--db", metavar="PATH", default=None, help=DB_HELP)(fn)


def open_store(db: str | None, upgrade: bool = True) -> admin.AdminStore:
    """Open the command's store; it is closed when the command ends, however it ends."""
    from ..storage import open_store as open_

    store = open_(db, upgrade=upgrade)
    click.get_current_context().call_on_close(store.close)
    return store


def require_project(store: admin.AdminStore, name: str, hint: str | None = "pass --project NAME") -> Project:
    """The existing project ``name``, or one line saying which projects there are."""
    project = store.project_by_name(name)
    if project is None:
        known = ", ".join(p.name for p in store.list_projects()) or "none"
        raise MCPMeterError(f"no project {name!r} (projects: {known})", hint=hint)
    return project


def actor() -> admin.Actor:
    """The CLI acts as the OS user (recorded in the audit log)."""
    return admin.Actor.os_user()


def print_table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """A plain table on the terminal (rich), as `keys list` and `audit` show theirs."""
    from rich.console import Console
    from rich.table import Table

    table = Table(show_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console().print(table)

"""`mcpmeter audit`, `mcpmeter access`, `mcpmeter users`: the audit log, people's access, one user's data.

The use-cases (and their audit entries) are ``mcpmeter.admin``, shared with the HTTP API.
"""

from __future__ import annotations

import json

import click

from .. import admin
from ..analytics.periods import iso
from ..exceptions import MCPMeterError
from .options import actor, db_option, friendly, open_store, print_table, require_project


@click.command("audit")
@click.option("--project", default=None, help="Only this project.")
@click.option("--since", default="30d", show_default=True, help="How far back (e.g. 24h, 7d).")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True, help="At most this many entries (the newest).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@db_option
@friendly
def audit_command(project: str | None, since: str, limit: int, as_json: bool, db: str | None) -> None:
    """Show the audit log: key create/revoke/rotate, projects, access grants, data deletion."""
    store = open_store(db)
    rows = admin.audit_log(store, require_project(store, project) if project else None, since, limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    print_table(("time", "project", "actor", "action", "target", "source", "detail"),
                ((r["time"], r["project"] or "", r["actor"], r["action"], r["target"] or "", r["source"],
                  json.dumps(r["detail"]) if r["detail"] else "") for r in rows))


@click.group("access")
def access() -> None:
    """Which people (signed in with OpenID Connect) may see which project, as viewer or admin."""


@access.command("grant")
@click.argument("identity")
@click.option("--project", required=True, help="The project they may see.")
@click.option("--role", type=click.Choice(sorted(admin.ROLES)), default="viewer", show_default=True,
              help="viewer: read usage; admin: also keys, access and deletion.")
@db_option
@friendly
def access_grant(identity: str, project: str, role: str, db: str | None) -> None:
    """Let IDENTITY (an email, sub:SUBJECT or group:NAME) see PROJECT."""
    store = open_store(db)
    identity = admin.grant_access(store, actor(), require_project(store, project), identity, role)
    click.echo(f"{identity} is now {role} of project {project!r}", err=True)


@access.command("revoke")
@click.argument("identity")
@click.option("--project", required=True, help="The project.")
@db_option
@friendly
def access_revoke(identity: str, project: str, db: str | None) -> None:
    """Take IDENTITY's access to PROJECT away (signed-in sessions lose it at their next request)."""
    store = open_store(db)
    identity = admin.revoke_access(store, actor(), require_project(store, project), identity)
    click.echo(f"{identity} no longer has access to project {project!r}", err=True)


@access.command("list")
@click.option("--project", default=None, help="Only this project.")
@db_option
@friendly
def access_list(project: str | None, db: str | None) -> None:
    """List people's grants."""
    store = open_store(db)
    project_id = require_project(store, project).id if project else None
    for name, identity, role, created in store.list_access(project_id):
        click.echo(f"{name}\t{identity}\t{role}\t{iso(created)}")


@click.group("users")
def users() -> None:
    """One user's data: delete it, or show how this machine hashes an identifier."""


@users.command("delete")
@click.option("--user", "user", required=True, help="The identifier as recorded (MCPMETER_USER, the OS user, or the h:… form).")
@click.option("--project", default="default", show_default=True, help="The project to delete from.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@db_option
@friendly
def users_delete(user: str, project: str, yes: bool, db: str | None) -> None:
    """Delete one user's raw events, sessions and user rows, and take their calls out of the rollups.

    Days whose raw events were already pruned by retention keep the user's calls in their
    totals, without anything that identifies the user (see docs/security.md)."""
    admin.check_user(user)
    store = open_store(db)
    proj = require_project(store, project)
    if not yes and not click.confirm(f"Delete every record of user {user!r} from project {project!r}?", default=False):
        raise MCPMeterError("cancelled")
    user_hash, counts = admin.delete_user(store, actor(), proj, user)
    click.echo(json.dumps({"project": project, "user_hash": user_hash, "deleted": counts}))


@users.command("hash")
@click.argument("user")
def users_hash(user: str) -> None:
    """Print how this machine sends USER with MCPMETER_HASH_USERS (the h:… form to pass to `users delete`)."""
    from ..identity import ClientUserHasher, client_user_key

    click.echo(ClientUserHasher(client_user_key())(user))

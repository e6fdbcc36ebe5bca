"""`mcpmeter keys rotate`, `mcpmeter audit`, `mcpmeter access`, `mcpmeter users` (registered in cli/main.py)."""

from __future__ import annotations

import json

import click

from ..exceptions import MCPMeterError
from .main import _open_store, db_option, friendly


def audited_project(store, name: str):
    """The project ``name``, created (and the creation audited) when it is new."""
    project = store.project_by_name(name)
    if project is None:
        from ..server.collector import audit

        project = store.ensure_project(name)
        audit.record(store, audit.os_actor(), "project.create", project, name)
    return project


def _project(store, name: str):
    project = store.project_by_name(name)
    if project is None:
        known = ", ".join(p.name for p in store.list_projects()) or "none"
        raise MCPMeterError(f"no project {name!r} (projects: {known})", hint="pass --project NAME")
    return project


@click.command("rotate")
@click.argument("name")
@click.option("--overlap", default="24h", show_default=True,
              help="How long the old key keeps working (90s, 30m, 24h, 7d): time to roll the new one out.")
@click.option("--project", default="default", show_default=True, help="The key's project.")
@db_option
@friendly
def keys_rotate(name, overlap, project, db) -> None:
    """Replace key NAME: a new key with the same scopes (printed once); the old one expires after --overlap."""
    from .. import keys as keylib
    from ..analytics.periods import iso
    from ..server.collector import audit
    from ..server.collector.security import new_signing_secret

    try:
        overlap_ms = keylib.parse_duration(overlap)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--overlap") from None
    store = _open_store(db)
    proj = _project(store, project)
    current = [k for k in store.list_keys(proj.id) if k.name == name]
    secret = new_signing_secret() if current and store.signing_secret(current[0].id) else None
    key = keylib.new_key()
    rotated = store.rotate_key(proj.id, name, keylib.hash_key(key), keylib.display_prefix(key), overlap_ms, secret,
                               audit.entry(audit.os_actor(), "key.rotate", proj, name, {"overlap_ms": overlap_ms}))
    if rotated is None:
        raise MCPMeterError(f"no active key named {name!r} in project {project!r}", hint="`mcpmeter keys list` shows them")
    old, new = rotated
    click.echo(key)
    if secret:
        click.echo(f"signing secret: {secret}")
    click.echo(f"new key {new.name!r} ({new.prefix}…, scopes {','.join(sorted(new.scopes))}); the old key is now "
               f"{old.name!r} and works until {iso(old.expires_at)}", err=True)


@click.command("audit")
@click.option("--project", default=None, help="Only this project.")
@click.option("--since", default="30d", show_default=True, help="How far back (e.g. 24h, 7d).")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True, help="At most this many entries (the newest).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@db_option
@friendly
def audit_command(project, since, limit, as_json, db) -> None:
    """Show the audit log: key create/revoke/rotate, projects, access grants, data deletion."""
    import time

    from ..server.collector import audit
    from ..keys import parse_duration

    try:
        since_ms = int(time.time() * 1000) - parse_duration(since)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    store = _open_store(db)
    project_id = _project(store, project).id if project else None
    rows = [audit.as_dict(e) for e in store.audit_entries(project_id, since_ms, limit)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_edge=False, header_style="bold")
    for column in ("time", "project", "actor", "action", "target", "source", "detail"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["time"], r["project"] or "", r["actor"], r["action"], r["target"] or "", r["source"],
                      json.dumps(r["detail"]) if r["detail"] else "")
    Console().print(table)


@click.group("access")
def access() -> None:
    """Which people (signed in with OpenID Connect) may see which project, as viewer or admin."""


@access.command("grant")
@click.argument("identity")
@click.option("--project", required=True, help="The project they may see.")
@click.option("--role", type=click.Choice(["viewer", "admin"]), default="viewer", show_default=True,
              help="viewer: read usage; admin: also keys, access and deletion.")
@db_option
@friendly
def access_grant(identity, project, role, db) -> None:
    """Let IDENTITY (an email, sub:SUBJECT or group:NAME) see PROJECT."""
    from ..server.collector import audit
    from ..server.oidc import normalize_identity

    store = _open_store(db)
    proj = _project(store, project)
    identity = normalize_identity(identity)
    store.grant_access(proj.id, identity, role, audit.entry(audit.os_actor(), "access.grant", proj, identity, {"role": role}))
    click.echo(f"{identity} is now {role} of project {project!r}", err=True)


@access.command("revoke")
@click.argument("identity")
@click.option("--project", required=True, help="The project.")
@db_option
@friendly
def access_revoke(identity, project, db) -> None:
    """Take IDENTITY's access to PROJECT away (signed-in sessions lose it at their next request)."""
    from ..server.collector import audit
    from ..server.oidc import normalize_identity

    store = _open_store(db)
    proj = _project(store, project)
    identity = normalize_identity(identity)
    if not store.revoke_access(proj.id, identity, audit.entry(audit.os_actor(), "access.revoke", proj, identity)):
        raise MCPMeterError(f"{identity} has no access to project {project!r}", hint="`mcpmeter access list` shows who has")
    click.echo(f"{identity} no longer has access to project {project!r}", err=True)


@access.command("list")
@click.option("--project", default=None, help="Only this project.")
@db_option
@friendly
def access_list(project, db) -> None:
    """List people's grants."""
    from ..analytics.periods import iso

    store = _open_store(db)
    project_id = _project(store, project).id if project else None
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
def users_delete(user, project, yes, db) -> None:
    """Delete one user's raw events, sessions and user rows, and take their calls out of the rollups.

    Days whose raw events were already pruned by retention keep the user's calls in their
    totals, without anything that identifies the user (see docs/security.md)."""
    from ..server.collector import audit
    from ..ingest import hasher_for

    store = _open_store(db)
    proj = _project(store, project)
    if not yes and not click.confirm(f"Delete every record of user {user!r} from project {project!r}?", default=False):
        raise MCPMeterError("cancelled")
    user_hash = hasher_for(proj)(user)
    counts = store.delete_user(proj.id, user_hash, audit.entry(audit.os_actor(), "user.delete", proj, user_hash))
    click.echo(json.dumps({"project": project, "user_hash": user_hash, "deleted": counts}))


@users.command("hash")
@click.argument("user")
def users_hash(user) -> None:
    """Print how this machine sends USER with MCPMETER_HASH_USERS (the h:… form to pass to `users delete`)."""
    from ..identity import ClientUserHasher, client_user_key

    click.echo(ClientUserHasher(client_user_key())(user))

"""`mcpmeter keys`: create, list, rotate and revoke API keys (the use-cases are ``mcpmeter.admin``)."""

from __future__ import annotations

import json
import time

import click

from .. import admin
from ..analytics.periods import iso
from ..storage.base import KeyInfo
from .options import actor, db_option, friendly, open_store, print_table, require_project


@click.group()
def keys() -> None:
    """Create, list, rotate and revoke API keys (stored hashed; shown once)."""


@keys.command("create")
@click.option("--name", required=True, help="A name to recognise the key by (letters, digits and _ . @ -).")
@click.option("--scopes", default="ingest", show_default=True, help="Comma-separated: ingest, read, admin.")
@click.option("--project", default="default", show_default=True, help="Project (created if new).")
@click.option("--expires-days", "expires_days", type=int, default=None, help="Expire after this many days (1 to 3650).")
@click.option("--require-signature", is_flag=True,
              help="Also make a signing secret (printed once): every ingest request with this key must be signed with it.")
@click.option("--server", "servers", multiple=True,
              help="Bind the key to this server: it may submit only for the servers named (repeat for several).")
@db_option
@friendly
def keys_create(name: str, scopes: str, project: str, expires_days: int | None, require_signature: bool,
                servers: tuple[str, ...], db: str | None) -> None:
    """Create a key and print it (the only time it is shown)."""
    scope_list = [s.strip() for s in scopes.split(",") if s.strip()]
    admin.check_key(name, scope_list, expires_days)  # a usage error before the store is opened
    admin.check_servers(list(servers))
    made = admin.create_key(open_store(db), actor(), project, name, scope_list, expires_days, require_signature,
                            list(servers) or None)
    click.echo(made.key)
    if made.signing_secret:
        click.echo(f"signing secret: {made.signing_secret}")
    click.echo(f"created key {name!r} for project {project!r} with scopes {','.join(sorted(made.info.scopes))}"
               + (f" for server(s) {', '.join(sorted(made.info.servers))} only" if made.info.servers else "")
               + "; store it now, it is not shown again", err=True)
    if made.signing_secret:
        click.echo("requests with this key must be signed: give the secret to the sender as MCPMETER_SIGNING_SECRET", err=True)


@keys.command("list")
@click.option("--project", default=None, help="Only this project.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@db_option
@friendly
def keys_list(project: str | None, as_json: bool, db: str | None) -> None:
    """List keys: name, prefix, scopes, project, created, last used, state."""
    store = open_store(db)
    project_id = require_project(store, project, "`mcpmeter keys list` shows every project's keys").id if project else None
    now = int(time.time() * 1000)
    listed = store.list_keys(project_id)
    if as_json:
        click.echo(json.dumps([{"name": k.name, "prefix": k.prefix, "project": k.project, "scopes": sorted(k.scopes),
                                "created": iso(k.created_at), "last_used": iso(k.last_used_at) if k.last_used_at else None,
                                "state": _state(k, now), "servers": sorted(k.servers) if k.servers else None}
                               for k in listed], indent=2))
        return
    print_table(("name", "prefix", "project", "scopes", "servers", "created", "last used", "state"),
                ((k.name, k.prefix + "…", k.project, ",".join(sorted(k.scopes)), ",".join(sorted(k.servers or ())) or "any",
                  iso(k.created_at), iso(k.last_used_at) if k.last_used_at else "never", _state(k, now)) for k in listed))


def _state(k: KeyInfo, now_ms: int) -> str:
    return "active" if k.active(now_ms) else ("revoked" if k.revoked_at else "expired")


@keys.command("rotate")
@click.argument("name")
@click.option("--overlap", default="24h", show_default=True,
              help="How long the old key keeps working (90s, 30m, 24h, 7d): time to roll the new one out.")
@click.option("--project", default="default", show_default=True, help="The key's project.")
@db_option
@friendly
def keys_rotate(name: str, overlap: str, project: str, db: str | None) -> None:
    """Replace key NAME: a new key with the same scopes (printed once); the old one expires after --overlap."""
    store = open_store(db)
    rotated = admin.rotate_key(store, actor(), require_project(store, project), name, overlap)
    old, new = rotated.old, rotated.new
    assert old.expires_at is not None  # a rotated key always expires after its overlap
    click.echo(rotated.key)
    if rotated.signing_secret:
        click.echo(f"signing secret: {rotated.signing_secret}")
    click.echo(f"new key {new.name!r} ({new.prefix}…, scopes {','.join(sorted(new.scopes))}); the old key is now "
               f"{old.name!r} and works until {iso(old.expires_at)}", err=True)


@keys.command("revoke")
@click.argument("name_or_prefix")
@click.option("--project", default=None, help="Only in this project.")
@db_option
@friendly
def keys_revoke(name_or_prefix: str, project: str | None, db: str | None) -> None:
    """Revoke a key by its name or its prefix (e.g. mcpm_AbC123)."""
    store = open_store(db)
    count = admin.revoke_key(store, actor(), require_project(store, project, None) if project else None, name_or_prefix)
    click.echo(f"revoked {count} key(s); every collector on this store refuses them from its next request on", err=True)

"""Admin use-cases, the same for the CLI and the HTTP API, and the audit log they write.

Create, rotate and revoke a key; grant and revoke a person's access to a project; erase
one user's data. Each use-case checks its arguments once, here (a ``ValidationError`` names
the field), then makes its change and its audit entry in ONE store transaction. The caller
says who acts (an ``Actor``) and turns the errors into its own shape: the CLI into one line
and a hint (or a usage error naming the option), the HTTP API into 422, 404 and 409 answers.

Standard library only: the CLI runs it on a base install, and the collector runs it in a
thread (every function here blocks on the store).
"""

from __future__ import annotations

import getpass
import json
import re
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

from . import keys as keylib
from .analytics.periods import iso
from .events import MAX_KEY_BYTES, MAX_NAME, NUL
from .exceptions import ConflictError, NotFoundError, StorageError, ValidationError
from .ingest import hasher_for
from .storage.base import AdminStore, AuditEntry, KeyInfo, Project

ACTIONS = ("key.create", "key.revoke", "key.rotate", "project.create", "access.grant", "access.revoke", "user.delete")
ROLES = {"viewer": frozenset({"read"}), "admin": frozenset({"read", "admin"})}  # a person's role -> key scopes
KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
MAX_EXPIRES_DAYS = 3650
MAX_IDENTITY = 320
MAX_USER = 512
MAX_KEY_SERVERS = 100


# Where each surface lists what a NotFoundError was looking for.
_LISTED = {
    "keys": {"cli": "`mcpmeter keys list` shows them", "http": "GET /v1/admin/keys lists them"},
    "access": {"cli": "`mcpmeter access list` shows who has", "http": "GET /v1/admin/access lists who has"},
}


@dataclass(frozen=True)
class Actor:
    """Who does an admin action, and through what."""

    name: str  # "os:alice", "key:mcpm_AbC123", "oidc:<sub> <email>"
    source: str = "cli"  # "cli" or "http"
    address: str | None = None  # the HTTP client's address (recorded in the entry's detail)

    @classmethod
    def os_user(cls) -> Actor:
        """The person at this machine's terminal."""
        return cls(os_actor())


def os_actor() -> str:
    try:
        return f"os:{getpass.getuser()}"
    except Exception:  # getuser() raises whatever the platform lookup raised
        return "os:unknown"


# ---- the audit log -------------------------------------------------------------------------


def entry(actor: Actor, action: str, project: Project | None, target: str | None = None,
          detail: dict[str, Any] | None = None) -> AuditEntry:
    """An audit entry, for the store to write in the transaction of the change it records."""
    detail = {**(detail or {}), **({"address": actor.address} if actor.address else {})}
    return AuditEntry(int(time.time() * 1000), project.id if project else None, project.name if project else None,
                      actor.name, action, target, json.dumps(detail, sort_keys=True) if detail else None, actor.source)


def as_dict(e: AuditEntry) -> dict[str, Any]:
    """An entry as ``mcpmeter audit --json`` and ``GET /v1/admin/audit`` show it."""
    return {"time": iso(e.ts), "project": e.project, "actor": e.actor, "action": e.action, "target": e.target,
            "detail": json.loads(e.detail) if e.detail else None, "source": e.source}


def audit_log(store: AdminStore, project: Project | None, since: str = "30d", limit: int = 1000) -> list[dict[str, Any]]:
    """The entries of the last ``since`` (e.g. 7d), at most ``limit`` (the newest), oldest first."""
    try:
        since_ms = int(time.time() * 1000) - keylib.parse_duration(since)
    except ValueError as exc:
        raise ValidationError(str(exc), "e.g. 24h or 7d", "since") from None
    return [as_dict(e) for e in store.audit_entries(project.id if project else None, since_ms, limit)]


# ---- projects --------------------------------------------------------------------------------


def ensure_project(store: AdminStore, actor: Actor, name: str) -> Project:
    """The project ``name``; created (and its creation audited, in the same transaction) when new."""
    if not name or len(name) > 200:
        raise ValidationError("a project name has 1 to 200 characters", field="project")
    return store.project_by_name(name) or store.ensure_project(name, entry(actor, "project.create", None, name)._replace(project=name))


# ---- keys ----------------------------------------------------------------------------------


class NewKey(NamedTuple):
    key: str  # the only time it exists outside its hash
    info: KeyInfo
    signing_secret: str | None


class RotatedKey(NamedTuple):
    key: str
    old: KeyInfo  # renamed name@<time>, expires after the overlap
    new: KeyInfo
    signing_secret: str | None


def check_key(name: object, scopes: object, expires_days: object) -> list[str]:
    """A new key's name, scopes and lifetime, as both surfaces accept them; its scopes, sorted."""
    if not isinstance(name, str) or not KEY_NAME.match(name):
        raise ValidationError("the key needs a name: letters, digits and _ . @ - (at most 64)", "e.g. grafana-read", "name")
    if not isinstance(scopes, (list, tuple)) or not all(isinstance(s, str) for s in scopes):
        raise ValidationError(f"scopes must be a non-empty list of {', '.join(keylib.SCOPES)}", field="scopes")
    unknown = [s for s in scopes if s not in keylib.SCOPES]
    if unknown or not scopes:
        raise ValidationError(f"unknown scope(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(keylib.SCOPES)}",
                              field="scopes")
    if expires_days is not None and (not isinstance(expires_days, int) or isinstance(expires_days, bool)
                                     or not 1 <= expires_days <= MAX_EXPIRES_DAYS):
        raise ValidationError(f"a key expires after a whole number of days from 1 to {MAX_EXPIRES_DAYS} (or never)",
                              field="expires_days")
    return sorted(set(scopes))


def check_servers(servers: object) -> list[str] | None:
    """The servers a key is bound to (None or empty: any server), sorted."""
    if servers is None:
        return None
    if not isinstance(servers, (list, tuple)) or not all(isinstance(s, str) for s in servers):
        raise ValidationError("servers must be a list of server names", "e.g. [\"weblab\", \"search\"]", "servers")
    bad = [s for s in servers if not 0 < len(s) <= MAX_NAME or NUL in s or len(s.encode()) > MAX_KEY_BYTES]
    if bad:
        raise ValidationError(f"a server name has 1 to {MAX_NAME} characters (at most {MAX_KEY_BYTES} bytes of UTF-8), "
                              f"no NUL: {bad[0][:80]!r}", field="servers")
    if len(set(servers)) > MAX_KEY_SERVERS:
        raise ValidationError(f"a key may name at most {MAX_KEY_SERVERS} servers", "leave them out to allow any", "servers")
    return sorted(set(servers)) or None


def create_key(store: AdminStore, actor: Actor, project: Project | str, name: object, scopes: object,
               expires_days: object = None, signed: bool = False, servers: object = None) -> NewKey:
    """A new key (and, when ``signed``, the signing secret every request with it must be signed with).

    ``project`` given by name is created when new (the CLI's way); over HTTP it is the caller's.
    ``servers``: the only servers the key may submit for (the MCP directory seed's "each server
    has a unique API key"); None for any."""
    scope_list = check_key(name, scopes, expires_days)
    server_list = check_servers(servers)
    assert isinstance(name, str) and (expires_days is None or isinstance(expires_days, int))  # checked just now
    if isinstance(project, str):
        project = ensure_project(store, actor, project)
    if any(k.name == name for k in store.list_keys(project.id)):
        raise _duplicate(actor, project, name)
    key = keylib.new_key()
    secret = keylib.new_signing_secret() if signed else None
    expires = int(time.time() * 1000) + expires_days * 86_400_000 if expires_days else None
    record = entry(actor, "key.create", project, name,
                   {"prefix": keylib.display_prefix(key), "scopes": scope_list, "expires_at": expires, "signed": signed,
                    **({"servers": server_list} if server_list else {})})
    try:
        info = store.add_key(project.id, name, keylib.hash_key(key), keylib.display_prefix(key), scope_list, expires,
                             audit=record, servers=server_list)
    except StorageError as exc:
        if "already exists" in str(exc):  # made by someone else since we looked
            raise _duplicate(actor, project, name) from None
        raise
    if secret:  # nobody knows the key before this returns, so nothing can use it unsigned meanwhile
        store.set_signing_secret(info.id, secret)
    return NewKey(key, info, secret)


def _duplicate(actor: Actor, project: Project, name: str) -> ConflictError:
    return ConflictError(f"a key named {name!r} already exists in project {project.name!r}",
                         "pick another --name, or revoke the old key first" if actor.source == "cli"
                         else "pick another name, or revoke the old key first")


def rotate_key(store: AdminStore, actor: Actor, project: Project, name: str, overlap: str = "24h") -> RotatedKey:
    """A successor of the active key ``name`` with its scopes (and a new signing secret when the
    old key required signatures); the old key keeps working for ``overlap`` (e.g. 24h)."""
    try:
        overlap_ms = keylib.parse_duration(str(overlap))
    except ValueError as exc:
        raise ValidationError(str(exc), "overlap is how long the old key keeps working, e.g. 24h", "overlap") from None
    current = [k for k in store.list_keys(project.id) if k.name == name]
    signed = bool(current and store.signing_secret(current[0].id))
    key = keylib.new_key()
    secret = keylib.new_signing_secret() if signed else None
    rotated: tuple[KeyInfo, KeyInfo] | None = store.rotate_key(project.id, name, keylib.hash_key(key), keylib.display_prefix(key),
                               overlap_ms, secret, entry(actor, "key.rotate", project, name, {"overlap_ms": overlap_ms}))
    if rotated is None:
        raise NotFoundError(f"no active key named {name!r} in project {project.name!r}", _LISTED["keys"][actor.source])
    old, new = rotated
    return RotatedKey(key, old, new, secret)


def revoke_key(store: AdminStore, actor: Actor, project: Project | None, ref: str) -> int:
    """Revoke the active keys named or prefixed ``ref`` (in ``project``, or in every project):
    one transaction, with its audit entry, per project. Returns how many were revoked."""
    ref = ref.rstrip("…")
    matching = [k for k in store.list_keys(project.id if project else None) if k.revoked_at is None and ref in (k.name, k.prefix)]
    revoked = 0
    for project_id in dict.fromkeys(k.project_id for k in matching):
        owner = project or store.project_by_id(project_id)
        prefixes = sorted(k.prefix for k in matching if k.project_id == project_id)
        revoked += store.revoke_key(project_id, ref, audit=entry(actor, "key.revoke", owner, ref, {"prefixes": prefixes}))
    if not revoked:
        where = f" in project {project.name!r}" if project else ""
        raise NotFoundError(f"no active key named or prefixed {ref!r}{where}", _LISTED["keys"][actor.source])
    return revoked


# ---- people's access -------------------------------------------------------------------------


def normalize_identity(text: str) -> str:
    """``sub:…`` and ``group:…`` as given; an email lower-cased."""
    text = text.strip()
    if text.startswith(("sub:", "group:")):
        return text
    return text.lower()


def check_identity(identity: object) -> str:
    if not isinstance(identity, str) or not identity.strip() or len(identity) > MAX_IDENTITY:
        raise ValidationError(f"an identity is an email, sub:SUBJECT or group:NAME (at most {MAX_IDENTITY} characters)",
                              "e.g. alice@example.com", "identity")
    return normalize_identity(identity)


def grant_access(store: AdminStore, actor: Actor, project: Project, identity: object, role: object = "viewer") -> str:
    """Let ``identity`` see ``project`` as viewer or admin; returns the identity as stored."""
    identity = check_identity(identity)
    if not isinstance(role, str) or role not in ROLES:
        raise ValidationError(f"role must be one of {', '.join(ROLES)}", field="role")
    store.grant_access(project.id, identity, role, entry(actor, "access.grant", project, identity, {"role": role}))
    return identity


def revoke_access(store: AdminStore, actor: Actor, project: Project, identity: object) -> str:
    identity = check_identity(identity)
    if not store.revoke_access(project.id, identity, entry(actor, "access.revoke", project, identity)):
        raise NotFoundError(f"{identity} has no access to project {project.name!r}", _LISTED["access"][actor.source])
    return identity


# ---- erasure ---------------------------------------------------------------------------------


def check_user(user: object) -> str:
    if not isinstance(user, str) or not user or len(user) > MAX_USER:
        raise ValidationError(f"name the user: the identifier the SDK recorded (at most {MAX_USER} characters)",
                              "for users hashed on the client, pass the h:… form (`mcpmeter users hash ID` on that machine)",
                              "user")
    return user


def delete_user(store: AdminStore, actor: Actor, project: Project, user: object) -> tuple[str, dict[str, int]]:
    """Erase one user's raw events, sessions and user rows, and take their calls out of the
    rollups (see docs/security.md). Returns the user's hash and what was deleted."""
    user_hash = hasher_for(project)(check_user(user))
    assert user_hash is not None  # a user was given
    counts = store.delete_user(project.id, user_hash, entry(actor, "user.delete", project, user_hash))
    return user_hash, counts

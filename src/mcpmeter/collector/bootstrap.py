"""What a collector does to a store before serving: default project, keys, env keys."""

from __future__ import annotations

import logging

from .. import credentials, keys, settings
from ..storage.base import Store
from .auth import DEFAULT_PROJECT

log = logging.getLogger("mcpmeter.collector")


def register_env_keys(store: Store, environ: dict[str, str] | None = None) -> list[str]:
    """``MCPMETER_API_KEY_<NAME>`` become ingest keys of the default project, named NAME."""
    project = store.ensure_project(DEFAULT_PROJECT)
    names = []
    for name, key in settings.env_api_keys(environ).items():
        existing = store.key_by_hash(keys.hash_key(key))
        if existing is None or existing.project_id != project.id:
            store.add_key(project.id, name, keys.hash_key(key), keys.display_prefix(key), ["ingest"], replace=True)
        names.append(name)
    return names


def ensure_local_keys(store: Store, url: str) -> dict[str, str] | None:
    """On a store with no keys yet, create the default project's keys and save them for local use.

    Returns the new keys, or None when the store already had keys.
    """
    project = store.ensure_project(DEFAULT_PROJECT)
    if store.list_keys(project.id):
        return None
    created = {}
    for scope in keys.SCOPES:
        key = keys.new_key()
        store.add_key(project.id, f"local-{scope}", keys.hash_key(key), keys.display_prefix(key), [scope])
        created[scope] = key
    path = credentials.save(url, created)
    log.info("created keys for project %r; saved to %s", DEFAULT_PROJECT, path)
    return created

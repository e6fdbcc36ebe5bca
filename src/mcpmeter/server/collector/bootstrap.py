"""What a collector does to a store before serving: default project, keys, env keys."""

from __future__ import annotations

import logging
from pathlib import Path

from ... import credentials, keys, settings
from ...exceptions import ConfigError, StorageError
from ...storage.base import Store
from .auth import DEFAULT_PROJECT

log = logging.getLogger("mcpmeter.server.collector")


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


def register_metrics_key(store: Store, environ: dict[str, str] | None = None) -> bool:
    """``MCPMETER_METRICS_KEY`` becomes a read key of the default project named ``metrics``
    (what a Prometheus scrape config sends as its bearer token)."""
    key = environ.get("MCPMETER_METRICS_KEY") if environ is not None else settings.get("MCPMETER_METRICS_KEY")
    path = environ.get("MCPMETER_METRICS_KEY_FILE") if environ is not None else settings.get("MCPMETER_METRICS_KEY_FILE")
    if not key and path:
        try:
            key = Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read MCPMETER_METRICS_KEY_FILE {path}: {exc.strerror}",
                              hint="point it at a readable file holding the key, or set MCPMETER_METRICS_KEY") from None
    if not key:
        return False
    project = store.ensure_project(DEFAULT_PROJECT)
    existing = store.key_by_hash(keys.hash_key(key))
    if existing is None or existing.project_id != project.id:
        store.add_key(project.id, "metrics", keys.hash_key(key), keys.display_prefix(key), ["read"], replace=True)
    return True


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
        try:
            store.add_key(project.id, f"local-{scope}", keys.hash_key(key), keys.display_prefix(key), [scope])
        except StorageError:
            if any(k.name == f"local-{scope}" for k in store.list_keys(project.id)):
                # Another collector starting on the same store made them first: use theirs.
                log.info("local keys were created by another collector on this store")
                return None
            raise
        created[scope] = key
    path = credentials.save(url, created)
    log.info("created keys for project %r; saved to %s", DEFAULT_PROJECT, path)
    return created

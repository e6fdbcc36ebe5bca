"""Keys a local `mcpmeter serve` created, saved where the local SDK and CLI look for them.

The file (``credentials.json`` in MCPMETER_HOME, mode 0600) maps a collector URL to its
keys, so several local collectors can coexist.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .paths import credentials_path


def normalize_url(url: str) -> str:
    url = url.rstrip("/")
    return url.replace("://localhost:", "://127.0.0.1:")


def load_all(path: Path | None = None) -> dict[str, dict[str, str]]:
    path = path or credentials_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def key_for(url: str, scope: str, path: Path | None = None) -> str | None:
    entry = load_all(path).get(normalize_url(url)) or {}
    return entry.get(f"{scope}_key") or entry.get("admin_key")


def save(url: str, keys: dict[str, str], path: Path | None = None) -> Path:
    """Record ``{scope: key}`` for ``url``; written atomically with owner-only permissions."""
    path = path or credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = load_all(path)
    data[normalize_url(url)] = {f"{scope}_key": key for scope, key in keys.items()}
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.replace(tmp, path)
    return path

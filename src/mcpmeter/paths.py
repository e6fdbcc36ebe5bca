"""Where mcpmeter keeps its files when nothing says otherwise."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def home_dir() -> Path:
    """``MCPMETER_HOME``, else the platform's per-user data directory."""
    explicit = os.environ.get("MCPMETER_HOME")
    if explicit:
        return Path(explicit).expanduser()
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    elif sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "mcpmeter"


def default_db_path() -> Path:
    return home_dir() / "mcpmeter.db"


def credentials_path() -> Path:
    return home_dir() / "credentials.json"


def spool_path() -> Path:
    return home_dir() / "spool.db"

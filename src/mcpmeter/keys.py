"""API keys and their signing secrets: how they look, how they are stored (hashed), what they may do."""

from __future__ import annotations

import hashlib
import secrets

SCOPES = ("ingest", "read", "admin")
PREFIX = "mcpm_"
SECRET_PREFIX = "mcps_"  # a signing secret (keys made with --require-signature; see signing.py)


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(24)


def new_signing_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    # Keys are 192-bit random, so a fast unsalted hash is enough (as GitHub tokens do).
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    return key[: len(PREFIX) + 6]


def allows(scopes: frozenset[str], needed: str) -> bool:
    return needed in scopes or "admin" in scopes


def parse_duration(text: str) -> int:
    """``90s``, ``30m``, ``24h``, ``7d`` (or a number of seconds) as milliseconds."""
    value = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
    number, unit = (value[:-1], value[-1]) if value and value[-1] in units else (value, "s")
    try:
        amount = float(number)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration; use e.g. 90s, 30m, 24h or 7d") from None
    if not 0 <= amount <= 3650 * 86_400:
        raise ValueError(f"{text!r} is out of range (0 to 3650 days)")
    return int(amount * units[unit] * 1000)

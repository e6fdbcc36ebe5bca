"""API keys: how they look, how they are stored (hashed), what they may do."""

from __future__ import annotations

import hashlib
import secrets

SCOPES = ("ingest", "read", "admin")
PREFIX = "mcpm_"


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(24)


def hash_key(key: str) -> str:
    # Keys are 192-bit random, so a fast unsalted hash is enough (as GitHub tokens do).
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    return key[: len(PREFIX) + 6]


def parse_scopes(text: str) -> list[str]:
    scopes = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise ValueError(f"unknown scope(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(SCOPES)}")
    return scopes


def allows(scopes: frozenset[str], needed: str) -> bool:
    return needed in scopes or "admin" in scopes

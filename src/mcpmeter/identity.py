"""User identity: who is calling, and how it is stored (never raw)."""

from __future__ import annotations

import getpass
import hashlib
import hmac
import os


def local_user() -> str | None:
    """``MCPMETER_USER``, else the OS user, else None."""
    explicit = os.environ.get("MCPMETER_USER")
    if explicit:
        return explicit
    try:
        return getpass.getuser()
    except Exception:  # getuser() raises whatever the platform lookup raised
        return None


class UserHasher:
    """Keyed hash (HMAC-SHA256 with the project's secret salt) of user identifiers.

    Users repeat, so results are memoised; the memo is bounded.
    """

    __slots__ = ("_key", "_memo")

    def __init__(self, salt: str) -> None:
        self._key = bytes.fromhex(salt)
        self._memo: dict[str, str] = {}

    def __call__(self, user: str | None) -> str | None:
        if user is None:
            return None
        digest = self._memo.get(user)
        if digest is None:
            digest = hmac.new(self._key, user.encode(), hashlib.sha256).hexdigest()[:32]
            if len(self._memo) >= 100_000:
                self._memo.clear()
            self._memo[user] = digest
        return digest

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


class _KeyedHash:
    """HMAC-SHA256 (truncated to 128 bits, hex) of user identifiers under one key, behind
    ``prefix``. Users repeat, so results are memoised; the memo is bounded."""

    __slots__ = ("_key", "_memo", "_prefix")

    def __init__(self, key: bytes, prefix: str = "") -> None:
        self._key = key
        self._prefix = prefix
        self._memo: dict[str, str] = {}

    def __call__(self, user: str | None) -> str | None:
        if user is None:
            return None
        digest = self._memo.get(user)
        if digest is None:
            digest = self._prefix + hmac.new(self._key, user.encode(), hashlib.sha256).hexdigest()[:32]
            if len(self._memo) >= 100_000:
                self._memo.clear()
            self._memo[user] = digest
        return digest


class UserHasher(_KeyedHash):
    """Keyed hash (HMAC-SHA256 with the project's secret salt) of user identifiers.

    Users repeat, so results are memoised; the memo is bounded.
    """

    __slots__ = ()

    def __init__(self, salt: str) -> None:
        super().__init__(bytes.fromhex(salt))


def client_user_key(home: os.PathLike[str] | str | None = None) -> bytes:
    """The secret this machine hashes user identifiers with (``MCPMETER_HASH_USERS``):
    ``user-key`` in MCPMETER_HOME, made once (owner-only) and kept."""
    from pathlib import Path

    from .paths import home_dir

    path = Path(home) / "user-key" if home is not None else home_dir() / "user-key"
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"user-key.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(os.urandom(32).hex())
    try:
        os.link(tmp, path)  # atomic, and never replaces a key another process made first
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return bytes.fromhex(path.read_text().strip())


class ClientUserHasher(_KeyedHash):
    """``h:`` + HMAC-SHA256 (truncated) of a user identifier under this machine's key: raw
    identifiers never leave the machine, and the collector's keyed hash of the ``h:`` form
    is as stable as of the raw one."""

    __slots__ = ()

    def __init__(self, key: bytes) -> None:
        super().__init__(key, "h:")

"""Event ids: time-ordered (millisecond prefix) so the store's id index stays append-mostly."""

from __future__ import annotations

import os


def event_id(ts_ms: int) -> str:
    return f"{ts_ms:012x}{os.urandom(10).hex()}"

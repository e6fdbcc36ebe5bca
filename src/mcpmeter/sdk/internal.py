"""The SDK never raises into the host server: its own failures are logged here.

Tests turn on ``collect`` (an autouse fixture) and fail when anything was recorded.
"""

from __future__ import annotations

import logging

log = logging.getLogger("mcpmeter")

collect = False
errors: list[BaseException] = []


def internal_error(message: str, exc: BaseException | None = None) -> None:
    log.error("mcpmeter: %s%s", message, f": {exc!r}" if exc else "")
    if collect:
        errors.append(exc or RuntimeError(message))

"""From validated events to stored rows: the one path both the collector and the local
SDK sink use, so an event means the same thing however it arrived."""

from __future__ import annotations

from collections.abc import Sequence

from .events import Event, Row, to_row
from .identity import UserHasher
from .storage.base import Project

_hashers: dict[tuple[int, str], UserHasher] = {}


def hasher_for(project: Project) -> UserHasher:
    key = (project.id, project.user_salt)
    hasher = _hashers.get(key)
    if hasher is None:
        hasher = _hashers[key] = UserHasher(project.user_salt)
    return hasher


def rows_for(project: Project, events: Sequence[Event]) -> list[Row]:
    hash_user = hasher_for(project)
    return [to_row(e, hash_user(e.user)) for e in events]

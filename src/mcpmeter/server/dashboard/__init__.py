"""The web dashboard the collector serves at ``/``: pages, assets, sign-in, live feed, admin API.

``install(collector)`` wires it into a collector and returns its routes:

- ``pages``    — HTML shells (``/``, ``/tools/{tool}``, ``/admin``, ``/signin``)
- ``assets``   — vendored and own static files, pre-gzipped, cached by content version
- ``sessions`` — cookie sign-in with a read key (``/v1/session``); the API accepts the cookie
- ``live``     — ``/v1/live`` Server-Sent Events fed by the writer after each commit
- ``admin``    — ``/v1/admin/*``: keys, projects, collector health (admin scope)
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.routing import BaseRoute

from . import admin, live, sessions
from .assets import routes as asset_routes
from .assets import shared as shared_assets
from .pages import Pages

__all__ = ["install"]

log = logging.getLogger("mcpmeter.server.dashboard")


def install(collector: Any) -> list[BaseRoute]:
    collector.live = live.Live()
    collector.auth.sessions = sessions.Sessions()
    previous = collector.writer.on_commit

    def on_commit(stored: dict[int, list[tuple]], submitted: int, seconds: float) -> None:
        try:
            collector.live.committed(stored, submitted, seconds)
        except Exception:  # the live feed must never fail an ingest that is already durable
            log.exception("publishing a commit to the live feed failed")
        if previous is not None:
            previous(stored, submitted, seconds)

    collector.writer.on_commit = on_commit
    assets = shared_assets()
    return [*Pages(assets).routes, *asset_routes(assets), *sessions.routes, *live.routes, *admin.routes]

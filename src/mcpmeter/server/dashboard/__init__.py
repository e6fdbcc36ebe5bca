"""The web dashboard the collector serves at ``/``: pages, assets, sign-in, live feed, admin API.

``routes()`` are its routes; the collector holds its state (``Collector.live``, ``.sessions``):

- ``pages``    — HTML shells (``/``, ``/tools/{tool}``, ``/admin``, ``/signin``)
- ``assets``   — vendored and own static files, pre-gzipped, cached by content version
- ``sessions`` — cookie sign-in with a read key (``/v1/session``); the API accepts the cookie
- ``live``     — ``/v1/live`` Server-Sent Events, a subscriber of the writer's commits
- ``admin``    — ``/v1/admin/*``: keys, projects, collector health (admin scope)
- ``alerts``   — ``/v1/alerts``: the alert conditions of the Prometheus rules, firing now
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from . import admin, alerts, live, sessions
from .assets import routes as asset_routes
from .assets import shared as shared_assets
from .pages import Pages

__all__ = ["routes"]


def routes() -> list[BaseRoute]:
    assets = shared_assets()
    return [*Pages(assets).routes, *asset_routes(assets), *sessions.routes, *live.routes, *admin.routes, *alerts.routes]

"""The dashboard's HTML pages: small shells; the data comes from the JSON API.

``/`` overview, ``/tools/{tool}`` one tool, ``/admin`` keys and health, ``/signin``. A page
that needs a key the browser has not presented sends it to ``/signin?next=…``; on loopback
with ``MCPMETER_LOCAL_TRUST`` the default project's pages just open. The sign-in page is
given ``next`` already checked (``sessions.safe_next``), in ``data-next``: the page's script
never reads a destination from the URL itself.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from ...analytics.questions import FILTERS, QUESTIONS, client_registry
from ...exceptions import AuthError
from .assets import Assets
from .sessions import safe_next

TEMPLATES = Path(__file__).resolve().parent / "templates"
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
                                "frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
# Module files each page imports (preloaded, so the browser fetches them in parallel).
MODULES = {
    "overview": ["js/overview.js", "js/alerts.js", "js/api.js", "js/format.js", "js/charts.js", "js/panels.js", "js/filters.js", "js/live.js", "js/shell.js"],
    "tool": ["js/tool.js", "js/api.js", "js/format.js", "js/charts.js", "js/panels.js", "js/filters.js", "js/live.js", "js/shell.js"],
    "admin": ["js/admin.js", "js/api.js", "js/format.js", "js/shell.js"],
    "signin": ["js/signin.js"],
}


# The answers each page asks for first (questions of the registry), fetched while its scripts
# load. The URLs must be the very ones api.js builds: the registry's filters in their order
# (the page reads them from REGISTRY_JSON), encoded as URLSearchParams does.
PANELS = {"overview": ("summary", "timeseries", "users", "tools", "errors", "clients"),
          "tool": ("summary", "timeseries", "users", "errors", "clients")}
# What api.js and filters.js know of the registry, embedded in every page (data, not script:
# the CSP allows no inline script, and none is run). "<" is escaped so no value can end the element.
REGISTRY_JSON = json.dumps(client_registry(), separators=(",", ":")).replace("<", "\\u003c")


def data_urls(request: Request, page: str, tool: str | None = None) -> list[str]:
    params = request.query_params
    f = {p.name: params.get(p.name) or None for p in FILTERS}
    if f["from"]:
        f["period"] = None
    elif not f["period"]:
        f["period"] = "7d"
    if tool is not None:
        f["tool"] = tool
    qs = urlencode([(k, v) for k, v in f.items() if v], safe="*").replace("~", "%7E")
    return ["/v1/session", *(f"{QUESTIONS[panel].path}?{qs}" for panel in PANELS[page])]


class Pages:
    def __init__(self, assets: Assets) -> None:
        self.assets = assets
        self.templates = {p.stem: p.read_text() for p in TEMPLATES.glob("*.html")}

    def render(self, template: str, page: str, title: str, data: Sequence[str] = (), after: str = "/") -> HTMLResponse:
        a = self.assets
        preload = "\n".join([*(f'  <link rel="modulepreload" href="{a.url(m)}">' for m in MODULES[page][1:]),
                             *(f'  <link rel="preload" as="fetch" crossorigin href="{html.escape(u)}">' for u in data)])
        text = (self.templates[template]
                .replace("{{title}}", html.escape(title))
                .replace("{{page}}", page)
                .replace("{{preload}}", preload)
                .replace("{{registry}}", REGISTRY_JSON)
                .replace("{{next}}", html.escape(after))
                .replace("{{main}}", a.url(MODULES[page][0])))
        for name in ("css/dashboard.css", "vendor/uPlot.min.css", "vendor/uPlot.iife.min.js", "js/theme.js", "icon.svg"):
            text = text.replace("{{" + name + "}}", a.url(name))
        return HTMLResponse(text, headers=SECURITY_HEADERS)

    def _guard(self, request: Request, scope: str) -> Response | None:
        try:
            request.app.state.collector.auth.authenticate(request, scope)
        except AuthError as exc:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            need = "&need=admin" if exc.status == 403 and scope == "admin" else ""
            return RedirectResponse(f"/signin?next={quote(target, safe='')}{need}", status_code=303,
                                    headers={"Cache-Control": "no-store"})
        return None

    async def overview(self, request: Request) -> Response:
        return self._guard(request, "read") or self.render("page", "overview", "mcpmeter", data_urls(request, "overview"))

    async def tool(self, request: Request) -> Response:
        name = request.path_params["tool"]
        return self._guard(request, "read") or self.render("page", "tool", f"{name} · mcpmeter", data_urls(request, "tool", name))

    async def admin(self, request: Request) -> Response:
        return self._guard(request, "admin") or self.render("page", "admin", "admin · mcpmeter", ["/v1/session"])

    async def signin(self, request: Request) -> Response:
        return self.render("signin", "signin", "sign in · mcpmeter", after=safe_next(request.query_params.get("next")))

    @property
    def routes(self) -> list[Route]:
        return [
            Route("/", self.overview, methods=["GET", "HEAD"]),
            Route("/tools/{tool:path}", self.tool, methods=["GET", "HEAD"]),
            Route("/admin", self.admin, methods=["GET", "HEAD"]),
            Route("/signin", self.signin, methods=["GET", "HEAD"]),
        ]

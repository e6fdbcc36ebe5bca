"""GET /v1/usage/*: read-scoped analytics endpoints, one per question of the registry.

The routes are derived from ``analytics/questions.py``: a question declared there is served
here, with the parameters declared there, and nothing else is.

Each answer is JSON by default, or a file (``analytics/exports.py``): ``format=csv`` (one table
of the answer, ``table=``), ``format=markdown`` or ``format=json`` send it as a download
(``Content-Disposition: attachment``); without ``format`` the ``Accept`` header chooses among
``application/json``, ``text/csv`` and ``text/markdown`` (406 when it accepts none of them).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ...analytics import questions
from ...analytics.exports import EXTENSIONS, MEDIA_TYPES
from ...analytics.questions import Question
from .responses import error

_ACCEPTED = {"application/json": "json", "text/csv": "csv", "text/markdown": "markdown", "text/x-markdown": "markdown"}


def negotiate(accept: str | None) -> str | None:
    """The format an ``Accept`` header prefers (json when it takes anything); None: none we can send."""
    if not accept:
        return "json"
    choices = []
    for position, part in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        media = media.lower()
        fmt = _ACCEPTED.get(media) or ("json" if media in ("*/*", "application/*") else None)
        if fmt is not None and quality > 0:
            choices.append((-quality, position, fmt))
    return min(choices)[2] if choices else None


def endpoint(question: Question) -> Callable[[Request], Coroutine[None, None, Response]]:
    async def handler(request: Request) -> Response:
        collector = request.app.state.collector
        principal = collector.auth.authenticate(request, "read")
        params = dict(request.query_params)
        q, options = questions.parse(question, params, principal.project.id, question.http_parameters)
        fmt = params.get("format") or negotiate(request.headers.get("accept"))
        if fmt is None:
            return error(406, "none of the formats the Accept header names can be sent",
                         "accept application/json, text/csv or text/markdown, or ask with format=json|csv|markdown")
        question.check_export(fmt, params.get("table"))
        result = await run_in_threadpool(questions.ask, collector.store, question, q, options)
        answer = {"project": principal.project.name, **result}
        if fmt == "json" and not params.get("format"):
            return JSONResponse(answer)
        body = question.export(answer, fmt, params.get("table"))
        headers = {"Vary": "Accept"}
        if params.get("format"):
            headers["Content-Disposition"] = f'attachment; filename="{_filename(question, answer, fmt, params.get("table"))}"'
        return Response(body, media_type=MEDIA_TYPES[fmt], headers=headers)

    return handler


def _filename(question: Question, answer: dict, fmt: str, table: str | None) -> str:
    """mcpmeter-<project>-<question>[-<table>]-<from>--<to>.<ext>, in safe characters only."""
    part = f"-{question.table(table).name}" if fmt == "csv" else ""
    stamp = f"{answer['from'][:16]}--{answer['to'][:16]}".replace(":", "")
    name = f"mcpmeter-{answer['project']}-{question.name}{part}-{stamp}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) + "." + EXTENSIONS[fmt]


routes = [Route(q.path, endpoint(q), methods=["GET"]) for q in questions.QUESTIONS.values()]

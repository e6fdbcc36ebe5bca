"""GET /v1/usage/*: read-scoped analytics endpoints, one per question of the registry.

The routes are derived from ``analytics/questions.py``: a question declared there is served
here, with the parameters declared there, and nothing else is.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ...analytics import questions
from ...analytics.questions import Question


def endpoint(question: Question) -> Callable[[Request], Coroutine[None, None, Response]]:
    async def handler(request: Request) -> Response:
        collector = request.app.state.collector
        principal = collector.auth.authenticate(request, "read")
        q, options = questions.parse(question, questions.params_of(question, request.query_params.multi_items()),
                                     principal.project.id)
        result = await run_in_threadpool(questions.ask, collector.store, question, q, options)
        return JSONResponse({"project": principal.project.name, **result})

    return handler


routes = [Route(q.path, endpoint(q), methods=["GET"]) for q in questions.QUESTIONS.values()]

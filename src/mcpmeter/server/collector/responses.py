"""The one shape of an error answer: ``{"error": ..., "hint": ...}``."""

from __future__ import annotations

from starlette.responses import JSONResponse


def error(status: int, message: str, hint: str | None = None, headers: dict | None = None, **extra) -> JSONResponse:
    body = {"error": message, **({"hint": hint} if hint else {}), **extra}
    return JSONResponse(body, status_code=status, headers=headers)

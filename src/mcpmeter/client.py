"""Reading a collector's API from the CLI (and other surfaces) with the standard library."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from . import credentials
from .exceptions import AuthError, MCPMeterError, Unreachable


def get_json(url: str, path: str, params: dict[str, Any], api_key: str | None, timeout: float = 30.0) -> dict[str, Any]:
    key = api_key or credentials.key_for(url, "read")
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    request = urllib.request.Request(url.rstrip("/") + path + (f"?{query}" if query else ""))
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read())
        except ValueError:
            body = {}
        message = body.get("error") or f"HTTP {exc.code}"
        if exc.code in (502, 503, 504) and not body.get("error"):  # a proxy in front of a collector that is down
            raise Unreachable(f"cannot reach the collector at {url}: HTTP {exc.code}",
                              hint="is `mcpmeter serve` running there? check --url / MCPMETER_URL") from None
        if exc.code in (401, 403):
            raise AuthError(f"{url}: {message}", exc.code, body.get("hint") or "pass a read key with --api-key or MCPMETER_API_KEY") from None
        raise MCPMeterError(f"{url}: {message}", body.get("hint")) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Unreachable(f"cannot reach the collector at {url}: {reason}", hint="is `mcpmeter serve` running there? check --url / MCPMETER_URL") from None

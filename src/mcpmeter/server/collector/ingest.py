"""POST /v1/events: read, validate, hash, hand to the writer, answer."""

from __future__ import annotations

import zlib

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from ...events import decode_batch
from ...exceptions import BatchError, BodyTooLarge, Overloaded, StorageError, Unstorable
from ...ingest import rows_for
from ...jsondepth import check_depth
from .auth import Principal
from .responses import error


async def read_body(request: Request, limit: int, principal: Principal | None = None, json: bool = True) -> bytes:
    """The request body, gunzipped if sent with ``Content-Encoding: gzip``, at most ``limit`` bytes.

    Every ingest body is read here. When the principal's key requires signed submissions, the
    signature is checked on the raw bytes as sent (before gunzip); a bad or missing one raises
    ``SignatureError`` (401). A gzip body is exactly one gzip member: a second member or bytes
    after the first are refused, not ignored. A ``json`` body must not nest deeper than the
    decoders can follow (``jsondepth``). Either problem is a ``BatchError`` (400).
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge()
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge()
            chunks.append(chunk)
    except ClientDisconnect:  # the sender gave up (a timeout): nothing was read, nothing is stored
        raise BatchError("the client disconnected before it sent the whole body") from None
    body = b"".join(chunks)
    if principal is not None and principal.signing_secret is not None:
        request.app.state.collector.signatures.verify(principal.signing_secret, request.headers, body)
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding == "gzip":
        inflater = zlib.decompressobj(wbits=31)
        try:
            body = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise BatchError(f"the body is not valid gzip: {exc}") from None
        if len(body) > limit or inflater.unconsumed_tail:
            raise BodyTooLarge()
        if not inflater.eof:
            raise BatchError("the gzip body is truncated")
        if inflater.unused_data:
            raise BatchError("the gzip body has bytes after its end (a second gzip member or trailing data); "
                             "send the whole body as one gzip member")
    elif encoding != "identity":
        raise BatchError(f"Content-Encoding {encoding!r} is not supported; send gzip or nothing")
    if json:
        check_depth(body)
    return body


def unstorable(exc: Unstorable) -> Response:
    """The answer to a request whose values the store refused (nothing of it was stored)."""
    return error(422, f"{exc}; nothing of this request was stored", exc.hint)


async def post_events(request: Request) -> Response:
    collector = request.app.state.collector
    principal = collector.auth.authenticate(request, "ingest")
    limit = collector.config.max_body_bytes
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type not in ("application/json", ""):
        return error(415, f"Content-Type {content_type!r} is not accepted", "send application/json")
    names = collector.names
    if not names.loaded(principal.project.id):
        await run_in_threadpool(names.load, principal.project.id)
    try:
        body = await read_body(request, limit, principal)
        counts: dict[str, int] = {}
        events, rejected = decode_batch(body, collector.config.limits, counts=counts, admit=principal.admitting(names.admitter(principal.project.id)))
    except BodyTooLarge:
        return error(413, f"the body is larger than {limit} bytes", "send smaller batches (MCPMETER_MAX_BODY_BYTES)")
    except BatchError as exc:
        return error(400, str(exc), "see the event format at /openapi.json")
    rows = rows_for(principal.project, events)
    try:
        result = await collector.writer.submit(principal.project.id, rows)
    except Overloaded as exc:
        collector.counters["requests_failed"] += 1
        return error(503, f"the collector is overloaded ({exc}); nothing was stored", "retry later", {"Retry-After": "2"})
    except Unstorable as exc:  # this request's values, not the store: retrying it cannot help
        collector.counters["requests_failed"] += 1
        return unstorable(exc)
    except StorageError:
        collector.counters["requests_failed"] += 1
        raise
    duplicates = result.duplicates + counts["repeated"]  # an id repeated within the batch is a duplicate too
    collector.counters["accepted"] += result.accepted
    collector.counters["duplicates"] += duplicates
    collector.counters["rejected"] += len(rejected)
    answer = {
        "accepted": result.accepted,
        "duplicates": duplicates,
        "rejected": [r.as_dict() for r in rejected],
    }
    if rejected and not events:
        answer["error"] = f"all {len(rejected)} events were rejected; nothing was stored"
        return JSONResponse(answer, status_code=422)
    return JSONResponse(answer)

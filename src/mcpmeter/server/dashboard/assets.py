"""The dashboard's static files: read once, gzipped once, served with long-lived caching.

Every file is served under ``/static/<version>/…`` where the version is a digest of all the
files, so URLs change whenever any file does (ES module imports are relative, so they
inherit the prefix) and browsers may keep them for a year. Nothing is fetched from
elsewhere: the charting library is vendored in ``static/vendor/``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import mimetypes
from pathlib import Path
from typing import NamedTuple

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

STATIC = Path(__file__).resolve().parent / "static"
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml",
          ".md": "text/markdown; charset=utf-8", ".LICENSE": "text/plain; charset=utf-8"}
_COMPRESSIBLE = (".js", ".css", ".svg", ".md", ".LICENSE")


class Asset(NamedTuple):
    body: bytes
    gzipped: bytes | None
    media_type: str
    etag: str


class Assets:
    def __init__(self, root: Path = STATIC) -> None:
        self.files: dict[str, Asset] = {}
        digest = hashlib.sha256()
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            name = path.relative_to(root).as_posix()
            body = path.read_bytes()
            digest.update(name.encode() + b"\0" + body)
            media = _TYPES.get(path.suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
            packed = gzip.compress(body, 9, mtime=0) if path.suffix in _COMPRESSIBLE else None
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            self.files[name] = Asset(body, packed if packed and len(packed) < len(body) else None, media, etag)
        self.version = digest.hexdigest()[:12]

    def url(self, name: str) -> str:
        if name not in self.files:
            raise KeyError(f"no static file {name!r}")
        return f"/static/{self.version}/{name}"

    @property
    def prefix(self) -> str:
        return f"/static/{self.version}/"

    async def serve(self, request: Request) -> Response:
        asset = self.files.get(request.path_params["path"])
        if asset is None:
            return Response("not found", status_code=404, media_type="text/plain")
        current = request.path_params["version"] == self.version
        headers = {"ETag": asset.etag, "Vary": "Accept-Encoding", "X-Content-Type-Options": "nosniff",
                   "Cache-Control": "public, max-age=31536000, immutable" if current else "no-cache"}
        if request.headers.get("if-none-match") == asset.etag:
            return Response(status_code=304, headers=headers)
        if asset.gzipped is not None and "gzip" in request.headers.get("accept-encoding", ""):
            return Response(asset.gzipped, media_type=asset.media_type, headers={**headers, "Content-Encoding": "gzip"})
        return Response(asset.body, media_type=asset.media_type, headers=headers)


@functools.cache
def shared() -> Assets:
    """The package's own static files (read once per process: they do not change while it runs)."""
    return Assets()


def routes(assets: Assets) -> list[Route]:
    return [Route("/static/{version}/{path:path}", assets.serve, methods=["GET", "HEAD"])]

"""A tiny real HTTP server that answers the SDK from a script, for retry and refusal tests."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple


class Hit(NamedTuple):
    at: float
    headers: dict[str, str]
    body: bytes


Answer = tuple[int, dict[str, str], dict]


class Scripted:
    """A tiny real HTTP server answering from a script: [(status, headers, body), ...],
    or with ``answer(gzip-decoded request body)`` for each request."""

    def __init__(self, script: list[Answer] = (), answer: Callable[[bytes], Answer] | None = None) -> None:
        self.script = list(script)
        self.answer = answer
        self.hits: list[Hit] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.hits.append(Hit(time.monotonic(), {k.lower(): v for k, v in self.headers.items()}, body))
                if owner.answer is not None:
                    status, headers, payload = owner.answer(gzip.decompress(body))
                else:
                    status, headers, payload = owner.script.pop(0) if owner.script else (500, {}, {"error": "script ended"})
                data = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in {**headers, "Content-Type": "application/json", "Content-Length": str(len(data))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> Scripted:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

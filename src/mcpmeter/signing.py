"""Signed submissions, the sender's side (stdlib only: the SDK imports it).

The signature of a request is ``v1=`` + hex HMAC-SHA256, keyed with the API key's signing
secret, of ``<timestamp>.<raw body>``: the unix-seconds timestamp sent in
``X-MCPMeter-Timestamp``, a dot, and the body bytes exactly as sent (gzip bytes when the
body is gzip-encoded). The collector's side is ``collector/security.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import time

TIMESTAMP_HEADER = "X-MCPMeter-Timestamp"
SIGNATURE_HEADER = "X-MCPMeter-Signature"


def sign(secret: str, timestamp: str | int, body: bytes) -> str:
    """The ``X-MCPMeter-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def signature_headers(secret: str, body: bytes, now: float | None = None) -> dict[str, str]:
    timestamp = str(int(time.time() if now is None else now))
    return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: sign(secret, timestamp, body)}

"""Who may be served without a key, and what a web page could have made a browser send.

Rules shared by the collector and ``mcpmeter mcp --http`` (standard library only: no server
dependency). A keyless caller is trusted only when all of these hold:

- it connects from a loopback address (the machine itself);
- it addressed a loopback name: ``Host`` is ``localhost``, an address of 127.0.0.0/8 or
  ``[::1]``, with or without a port. A page on ``evil.example`` whose DNS name was rebound to
  127.0.0.1 reaches the same socket, but its requests say ``Host: evil.example``;
- it is not a browser running another site's page: no ``Origin`` other than the server's own
  (``Origin: null`` included), and no ``Sec-Fetch-Site: cross-site`` except for a top-level
  navigation (following a link to the dashboard).

And, for anyone, a request that changes something (POST, PUT, PATCH, DELETE) must not come
from another site's page; without a key header, a body it carries must be declared JSON: an
HTML form or a "simple" cross-site ``fetch`` can send ``text/plain``, form types or no type
at all, never ``application/json`` or an ``Authorization`` header without the server's
consent (CORS, which these servers never give).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from .exceptions import AuthError

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def key_in(headers: Mapping[str, str]) -> str | None:
    """The API key a request presents (``Authorization: Bearer <key>`` or ``X-API-Key``), or None."""
    header = headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthError("the Authorization header must be `Bearer <key>`",
                            hint="send the key as `Authorization: Bearer <key>` or `X-API-Key: <key>`")
        return value.strip()
    return headers.get("x-api-key") or None


def is_loopback(address: str | None) -> bool:
    """A peer address (or name) of this machine: 127.0.0.0/8, ::1, ``localhost``."""
    if not address:
        return False
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address.lower() == "localhost"


def split_authority(authority: str) -> tuple[str, int | None] | None:
    """``host[:port]`` (IPv6 in brackets) as (lower-cased host, port); None if malformed."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        host, sep, rest = authority[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text = authority.partition(":")
        if not sep:
            port_text = None
    if not host:
        return None
    if port_text is None:
        return host, None
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        return None
    return host, int(port_text)


def loopback_host(host_header: str | None) -> bool:
    """``Host`` names this machine: localhost, 127.x.y.z or [::1], any port. A DNS name never does."""
    parts = split_authority(host_header) if host_header else None
    if parts is None:
        return False
    return is_loopback(parts[0])


def _origin(origin: str) -> tuple[str, str, int] | None:
    scheme, sep, rest = origin.strip().lower().partition("://")
    if not sep or scheme not in _DEFAULT_PORTS or "/" in rest:
        return None
    parts = split_authority(rest)
    if parts is None:
        return None
    return scheme, parts[0], parts[1] if parts[1] is not None else _DEFAULT_PORTS[scheme]


def same_origin(origin: str, hosts: Iterable[str | None]) -> bool:
    """``origin`` (scheme://host[:port]) names the host and port one of ``hosts`` (Host header values) names."""
    parsed = _origin(origin)
    if parsed is None:
        return False  # "null", or garbage: never this server's own page
    scheme, host, port = parsed
    for value in hosts:
        parts = split_authority(value) if value else None
        if parts is not None and parts[0] == host and (parts[1] or _DEFAULT_PORTS[scheme]) == port:
            return True
    return False


def loopback_origin(origin: str) -> bool:
    """A page served from this machine (http://localhost:6274, the MCP Inspector, for example)."""
    parsed = _origin(origin)
    return parsed is not None and is_loopback(parsed[1])


def cross_site(headers: Mapping[str, str], allow_loopback_origins: bool = False) -> str | None:
    """Why the request comes from another site's page (None: it does not, as far as its browser says).

    ``headers``: lower-case names. The server's own origin is the one its ``Host`` (or
    ``X-Forwarded-Host``, set by a reverse proxy, never by a page) names."""
    origin = headers.get("origin")
    if origin is not None:
        if same_origin(origin, (headers.get("host"), headers.get("x-forwarded-host"))):
            return None
        if allow_loopback_origins and loopback_origin(origin):
            return None
        return f"it comes from a page of another site (Origin: {origin[:100]})"
    if headers.get("sec-fetch-site") == "cross-site" and headers.get("sec-fetch-mode") != "navigate":
        return "it comes from a page of another site (Sec-Fetch-Site: cross-site)"
    return None


def keyless_refusal(headers: Mapping[str, str], allow_loopback_origins: bool = False) -> str | None:
    """Why a keyless request from a loopback address is still not trusted (None: it is)."""
    host = headers.get("host")
    if not loopback_host(host):
        shown = "none" if host is None else host[:100]
        return f"requests without a key are trusted only when addressed to a loopback name; this one says Host: {shown}"
    why = cross_site(headers, allow_loopback_origins)
    if why is not None:
        return f"a request without a key is refused: {why}"
    return None


def is_json_type(content_type: str | None, also: Iterable[str] = ()) -> bool:
    """``application/json``, ``application/<something>+json`` (parameters ignored), or one of ``also``."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json")) or media in also

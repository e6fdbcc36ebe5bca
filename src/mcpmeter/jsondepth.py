"""How deeply JSON from outside may nest: the one check every request body and token passes first.

JSON decoders (msgspec, the standard library's ``json``) follow nesting by recursion and give
up with ``RecursionError`` somewhere below Python's recursion limit — deep inside whatever
handler was decoding, which then answered 500 (and a sender retries a 500 forever).
``check_depth`` skims the document once, without building it (msgspec, C speed: about a
tenth of a full decode), and raises ``TooDeep`` — a ``BatchError``, so a 400 — when it nests
deeper than the decoders can follow.

The skim runs ``_MARGIN`` Python frames below its caller, so a document that passes still
decodes in any function up to that many frames deeper (every decoder of a body runs within a
few frames of where its body was read). No format mcpmeter reads nests more than about ten
levels; a document that passes nests less than about 850 (Python's default recursion limit of
1,000, minus the frames above the check).
"""

from __future__ import annotations

import msgspec

from .exceptions import TooDeep

_MARGIN = 100


class _Anything(msgspec.Struct, forbid_unknown_fields=False):
    """An object whose members are all skipped (still walked, so their depth counts)."""


_skim = msgspec.json.Decoder(list[msgspec.Raw] | _Anything).decode


def check_depth(data: bytes | str, what: str = "the JSON body") -> None:
    """Raise ``TooDeep`` when ``data`` nests too deeply to decode; anything else (even not JSON) passes."""
    try:
        _skim_below(data, _MARGIN)
    except RecursionError:
        raise TooDeep(what) from None
    except (msgspec.DecodeError, TypeError):
        pass  # not JSON, or not an array or object: the decoder proper says what is wrong


def _skim_below(data: bytes | str, frames: int) -> None:
    if frames:
        return _skim_below(data, frames - 1)
    _skim(data)
    return None

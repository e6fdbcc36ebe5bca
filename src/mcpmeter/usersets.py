"""Exact sets of users, as bitmaps over per-project user numbers.

Each user of a project gets a small number (0, 1, 2 … in order of first appearance, kept by
the store). A set of users is the integer whose bit n is set when user n is in it. Union is
``|`` and the size is ``int.bit_count()``, both in C, so the distinct users of a month
across every tool are a few thousand integer ORs, however many events there were, and
exact. Stored little-endian behind a tag byte; a sparse set (a few users with large numbers)
is stored as its numbers instead when that is several times smaller.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable

BITMAP = 0x00
NUMBERS = 0x01  # then uint32 little-endian user numbers


def from_numbers(numbers: Iterable[int]) -> int:
    numbers = list(numbers)
    if not numbers:
        return 0
    bits = bytearray((max(numbers) >> 3) + 1)
    for n in numbers:
        bits[n >> 3] |= 1 << (n & 7)
    return int.from_bytes(bits, "little")


def as_int(blob: bytes | None) -> int:
    if not blob:
        return 0
    if blob[0] == BITMAP:
        return int.from_bytes(blob[1:], "little")
    numbers = array("I", blob[1:])
    if sys.byteorder == "big":
        numbers.byteswap()
    return from_numbers(numbers)


def encode(users: int) -> bytes | None:
    """The bitmap, unless the list of numbers is much smaller (reading a bitmap costs nothing)."""
    if not users:
        return None
    bitmap = users.to_bytes((users.bit_length() + 7) // 8, "little")
    if 16 * users.bit_count() >= len(bitmap):
        return bytes((BITMAP,)) + bitmap
    numbers = array("I", (i * 8 + bit for i, byte in enumerate(bitmap) if byte for bit in range(8) if byte >> bit & 1))
    if sys.byteorder == "big":
        numbers.byteswap()
    return bytes((NUMBERS,)) + numbers.tobytes()


def union(a: bytes | None, b: bytes | None) -> bytes | None:
    if not a:
        return b
    if not b:
        return a
    return encode(as_int(a) | as_int(b))


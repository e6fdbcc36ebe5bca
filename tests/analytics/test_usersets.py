"""Exact user sets (bitmaps over user numbers): what goes in comes out, unions are set unions."""

from __future__ import annotations

import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st

from mcpmeter import usersets
from mcpmeter.storage.sqlite_rollups import register_functions

numbers = st.sets(st.integers(0, 200_000), max_size=300)


@settings(deadline=None, max_examples=150)
@given(numbers)
def test_a_set_round_trips_in_whichever_form_is_stored(users):
    value = usersets.from_numbers(users)
    blob = usersets.encode(value)
    assert value.bit_count() == len(users)
    assert usersets.as_int(blob) == value
    assert value == sum(1 << n for n in users)
    assert blob is None if not users else blob[0] in (usersets.BITMAP, usersets.NUMBERS)


@settings(deadline=None, max_examples=150)
@given(numbers, numbers)
def test_union_is_the_set_union_in_python_and_in_sql(a, b):
    blob_a, blob_b = (usersets.encode(usersets.from_numbers(s)) for s in (a, b))
    assert usersets.as_int(usersets.union(blob_a, blob_b)).bit_count() == len(a | b)
    conn = sqlite3.connect(":memory:")
    register_functions(conn)
    (merged,) = conn.execute("SELECT users_union(?, ?)", (blob_a, blob_b)).fetchone()
    conn.close()
    assert usersets.as_int(merged) == usersets.from_numbers(a | b)


def test_a_dense_set_is_a_bitmap_and_a_sparse_one_a_list():
    assert usersets.encode(usersets.from_numbers(range(1000)))[0] == usersets.BITMAP
    assert usersets.encode(usersets.from_numbers([5, 150_000]))[0] == usersets.NUMBERS

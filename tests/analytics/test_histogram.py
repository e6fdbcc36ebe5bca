"""The latency histogram: percentiles within RELATIVE_ERROR of the exact nearest-rank value,
merging in any grouping equal to one histogram of everything, serialisation round trips."""

from __future__ import annotations

import math
import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st

from mcpmeter import histogram
from mcpmeter.histogram import FLOOR_MS, RELATIVE_ERROR, bin_of, bin_value, percentiles

settings.register_profile("mcpmeter", deadline=None, max_examples=150)
settings.load_profile("mcpmeter")

# Durations the wire format accepts that the bound covers: 1 µs to a day (ms).
durations = st.floats(min_value=FLOOR_MS, max_value=86_400_000, allow_nan=False, allow_infinity=False)
tiny = st.floats(min_value=0, max_value=FLOOR_MS, allow_nan=False)
quantiles = st.floats(min_value=0, max_value=100, allow_nan=False)


def build(values) -> dict[int, int]:
    hist: dict[int, int] = {}
    for v in values:
        b = bin_of(v)
        hist[b] = hist.get(b, 0) + 1
    return hist


def exact(values, q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def within(estimate: float, truth: float) -> bool:
    # The answer keeps six significant digits: that rounding (≤ 5e-6) comes on top of the bin.
    return abs(estimate - truth) <= (RELATIVE_ERROR * (1 + 1e-9) + 5e-6) * truth


@given(st.lists(durations, min_size=1, max_size=300), st.lists(quantiles, min_size=1, max_size=5))
def test_a_percentile_is_within_the_relative_error_of_the_exact_one(values, qs):
    got = percentiles(build(values), qs, min(values), max(values))
    for q, estimate in zip(qs, got):
        assert within(estimate, exact(values, q)), (q, estimate, exact(values, q))


@given(st.lists(durations, min_size=1, max_size=300), st.lists(quantiles, min_size=1, max_size=5))
def test_without_min_and_max_the_bound_still_holds(values, qs):
    for q, estimate in zip(qs, percentiles(build(values), qs)):
        assert within(estimate, exact(values, q))


@given(st.lists(tiny, min_size=1, max_size=50), quantiles)
def test_below_a_microsecond_the_error_is_at_most_a_microsecond(values, q):
    (estimate,) = percentiles(build(values), [q], min(values), max(values))
    assert abs(estimate - exact(values, q)) <= FLOOR_MS


@given(st.lists(durations, min_size=1, max_size=200), st.lists(quantiles, min_size=1, max_size=5))
def test_percentiles_never_leave_the_observed_range_and_are_ordered(values, qs):
    qs = sorted(qs)
    got = percentiles(build(values), qs, min(values), max(values))
    assert all(min(values) * (1 - 5e-6) <= v <= max(values) * (1 + 5e-6) for v in got)  # up to the rounding
    assert got == sorted(got)


@given(durations)
def test_a_value_falls_in_the_bin_whose_middle_estimates_it(value):
    index = bin_of(value)
    assert abs(bin_value(index) - value) <= RELATIVE_ERROR * (1 + 1e-9) * value
    assert bin_of(value * (1 + 1e-12)) >= index  # monotonic


@given(st.lists(st.lists(durations, max_size=60), min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_merging_in_any_grouping_equals_one_histogram_of_everything(parts, rnd):
    whole = build(v for part in parts for v in part)
    blobs = [histogram.encode(build(part)) if part else None for part in parts]
    assert histogram.merge_blobs(blobs) == whole
    rnd.shuffle(blobs)
    merged: dict[int, int] = {}
    for blob in blobs:  # pairwise, in another order
        histogram.add_into(merged, histogram.decode(blob))
    assert merged == whole


@given(st.lists(durations, max_size=100), st.lists(durations, max_size=100))
def test_the_sql_merge_function_is_addition(a, b):
    conn = sqlite3.connect(":memory:")
    from mcpmeter.storage.sqlite_rollups import register_functions

    register_functions(conn)
    blob_a = histogram.encode(build(a)) if a else None
    blob_b = histogram.encode(build(b)) if b else None
    (merged,) = conn.execute("SELECT hist_merge(?, ?)", (blob_a, blob_b)).fetchone()
    conn.close()
    assert histogram.decode(merged) == build(a + b)


@given(st.dictionaries(st.integers(0, 700), st.integers(1, 10**12), max_size=80))
def test_encoding_round_trips(hist):
    assert histogram.decode(histogram.encode(hist)) == hist
    assert histogram.decode(None) == {} and histogram.decode(b"") == {}


def test_an_empty_histogram_has_no_percentiles():
    assert percentiles({}, [50, 95, 99]) == [None, None, None]


def test_the_bins_span_a_microsecond_to_a_day_in_under_600_bins():
    assert bin_of(FLOOR_MS) == 0 and 0 < bin_of(86_400_000) < 600
    assert math.isclose(RELATIVE_ERROR, 2 ** (1 / 32) - 1) and RELATIVE_ERROR < 0.022


@given(st.lists(st.lists(durations, max_size=60), min_size=1, max_size=8), st.lists(st.booleans(), min_size=8, max_size=8))
def test_dense_and_sparse_blobs_add_up_alike(parts, dense):
    """Rollups store either form (dense for the per-tool daily rollup); any mix sums exactly."""
    total = histogram.Sum()
    for part, as_dense in zip(parts, dense):
        hist = build(part)
        total.add(histogram.encode_dense(histogram.pack(hist)) if as_dense else (histogram.encode(hist) if hist else None))
    whole = build(v for part in parts for v in part)
    assert total.result() == whole
    assert histogram.decode(histogram.encode_dense(histogram.pack(whole))) == whole


@given(st.dictionaries(st.integers(0, 700), st.integers(1, 2**63), max_size=80))
def test_the_dense_form_round_trips_every_count(hist):
    blob = histogram.encode_dense(histogram.pack(hist))
    assert histogram.decode(blob) == hist and histogram.unpack(histogram.packed(blob)) == hist

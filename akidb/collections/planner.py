"""Filtered vector search that stays exact where it can and never loses recall to a selective filter.

The metadata mirror tells exactly how many documents pass a filter, so the planner compares costs rather
than guessing: scanning the passing vectors exactly (cost ~ rows scanned), walking the HNSW graph with
hnswlib's filter callable (cost ~ ef / selectivity visits, each a Python call), or walking it unfiltered
for a wider top k and dropping what fails (cheap when most documents pass). A graph plan that finds fewer
than k passing documents, or runs past what the exact scan would have cost, ends in the exact scan, so a
filter that shuns the query's neighbourhood costs at most about twice the exact scan and loses nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from akidb.observability import SEARCH_PLANS
from akidb.storage.collection import OpenCollection

Vector = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]

# Measured on this project's 2-core machine with 384 dimensions (bench/filters.py), in microseconds:
# copying one row out of the exact matrix and scoring it, scoring one row in place, and one node visit of
# a filtered HNSW walk (the Python filter call and a distance).
GATHER_US_PER_FLOAT = 0.3 / 384
SCAN_US_PER_FLOAT = 0.075 / 384
FILTERED_VISIT_US = 2.0
# A filtered walk makes about this many filter calls per ef / share (measured 2.4-2.6 at 6-10 % shares).
FILTERED_VISITS_PER_EF = 2.5
# It is chosen only when it should cost less than half the exact scan (its cost varies from query to query),
# and it may run to this many times its expected calls (never past the scan's cost) before giving up: a
# filter that shuns the query's neighbourhood then wastes a bounded walk before the scan.
FILTERED_HEADROOM = 2.0
FILTERED_BUDGET = 4.0
# An unfiltered walk visits about 8 nodes per unit of ef (measured: 0.24 ms at ef 64, 100k x 384).
GRAPH_US_PER_EF = 4.0
# At or above this share of passing documents, an unfiltered walk over a wider top k is the cheaper graph plan.
OVERSAMPLE_MIN_SHARE = 0.5
OVERSAMPLE_FACTOR = 2.0


@dataclass(frozen=True, slots=True)
class DenseHits:
    labels: list[int]
    distances: list[float]
    plan: str


def exact_cost_us(passing: int, total: int, dimension: int) -> float:
    """What ExactVectors.search costs over `passing` of `total` rows (it scans in place past a quarter)."""
    if passing * 4 > total:
        return total * dimension * SCAN_US_PER_FLOAT
    return passing * dimension * GATHER_US_PER_FLOAT


def dense_search(
    collection: OpenCollection,
    query: Vector,
    k: int,
    *,
    ef: int | None,
    allowed: Labels | None,
    exact_max: int,
) -> DenseHits:
    """The k nearest documents, best first, among `allowed` (every live document when None)."""
    hits = _plan(collection, query, k, ef=ef, allowed=allowed, exact_max=exact_max)
    SEARCH_PLANS.labels(plan=hits.plan).inc()
    return hits


def _plan(
    collection: OpenCollection, query: Vector, k: int, *, ef: int | None, allowed: Labels | None, exact_max: int
) -> DenseHits:
    total = collection.live_count
    if allowed is None:
        if total <= exact_max:
            return DenseHits(*collection.exact.search(query, k), plan="exact")
        found = collection.graph.search(query, k, ef)
        assert found is not None  # only a filtered walk gives up
        return DenseHits(*found, plan="graph")
    passing = len(allowed)
    exact_us = exact_cost_us(passing, total, collection.dimension)
    if total <= exact_max or passing <= k or total == 0:
        return _exact(collection, query, k, allowed)
    share = passing / total
    ef_search = max(ef or collection.graph.params.ef_search, k)
    if share >= OVERSAMPLE_MIN_SHARE:
        wide = min(total, math.ceil(k / share * OVERSAMPLE_FACTOR))
        if GRAPH_US_PER_EF * max(ef_search, wide) * FILTERED_HEADROOM >= exact_us:
            return _exact(collection, query, k, allowed)
        oversampled = _oversampled(collection, query, k, ef_search, allowed, wide, exact_us)
        return oversampled or _exact(collection, query, k, allowed)
    expected_calls = FILTERED_VISITS_PER_EF * ef_search / share
    if expected_calls * FILTERED_VISIT_US * FILTERED_HEADROOM >= exact_us:
        return _exact(collection, query, k, allowed)
    budget = min(exact_us / FILTERED_VISIT_US, FILTERED_BUDGET * expected_calls)
    return _filtered(collection, query, k, ef_search, allowed, budget) or _exact(collection, query, k, allowed)


def _exact(collection: OpenCollection, query: Vector, k: int, allowed: Labels) -> DenseHits:
    return DenseHits(*collection.exact.search(query, k, allowed), plan="exact_filtered")


def _oversampled(
    collection: OpenCollection, query: Vector, k: int, ef: int, allowed: Labels, wide: int, exact_us: float
) -> DenseHits | None:
    """Walk unfiltered for a top `wide` in which k should pass; widen while that stays cheaper than the scan."""
    passes = _membership(allowed)
    total = collection.live_count
    while True:
        found = collection.graph.search(query, wide, max(ef, wide))
        assert found is not None
        labels, distances = found
        kept = [(label, distance) for label, distance in zip(labels, distances, strict=True) if passes(label)]
        if len(kept) >= k or wide >= total:
            kept = kept[:k]
            return DenseHits([label for label, _ in kept], [d for _, d in kept], plan="graph_oversampled")
        wide = min(total, wide * 4)
        if GRAPH_US_PER_EF * max(ef, wide) * FILTERED_HEADROOM >= exact_us:
            return None


def _filtered(
    collection: OpenCollection, query: Vector, k: int, ef: int, allowed: Labels, budget: float
) -> DenseHits | None:
    """hnswlib's filter callable, with a budget of calls: past it every label is accepted, so that the walk
    ends soon, and the answer is thrown away for the exact scan."""
    passes = _membership(allowed)
    calls = 0
    limit = int(budget)

    def accept(label: int) -> bool:
        nonlocal calls
        calls += 1
        return calls > limit or passes(label)

    found = collection.graph.search(query, k, ef, accept=accept)
    if found is None or calls > limit:
        return None
    return DenseHits(*found, plan="graph_filtered")


def _membership(allowed: Labels) -> Callable[[int], bool]:
    """A fast `label in allowed` for hnswlib's callback: one byte per label, indexed."""
    if len(allowed) == 0:
        return lambda label: False
    flags = np.zeros(int(allowed.max()) + 1, np.uint8)
    flags[allowed] = 1
    table = flags.tobytes()
    size = len(table)
    return lambda label: label < size and table[label] == 1

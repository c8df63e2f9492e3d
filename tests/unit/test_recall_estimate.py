"""Live recall telemetry (collections/recall.py) on a real collection (SQLite store, hnswlib, exact mirror): the
exact re-run, the estimate and its ef_search advice, sampling, the bounded queue and the worker thread."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from akidb import observability
from akidb.collections.recall import MIN_SAMPLES, QUEUE_SIZE, RecallEstimator, _Sample
from akidb.config import load_settings
from tests.unit.test_index import Harness, random_vectors


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path, dimension=16)
    h.upsert({f"d{i}": v for i, v in enumerate(random_vectors(500, 16, 0))})
    yield h
    h.close()


def sample(h: Harness, query: np.ndarray, found: list[int], ef: int = 64) -> _Sample:
    return _Sample(h.collection, query, 10, tuple(found), ef)


def test_the_exact_rerun_scores_each_sampled_search_and_advises_below_the_target(harness: Harness) -> None:
    estimator = RecallEstimator(sample_rate=1.0, target=0.95)
    queries = random_vectors(2 * MIN_SAMPLES, 16, 1)
    truths = [harness.collection.exact.search(q, 10)[0] for q in queries]
    # Right answers: recall 1, no advice.
    for query, truth in zip(queries[:MIN_SAMPLES], truths, strict=False):
        assert estimator.measure(sample(harness, query, truth)) == 1.0
    estimate = estimator.estimate(harness.collection.id)
    assert estimate is not None
    assert (estimate.recall, estimate.samples, estimate.ef_search, estimate.advice) == (1.0, MIN_SAMPLES, 64, None)
    # As many with 8 of 10 right: a mean of 0.9, below the target: try twice the ef.
    for query, truth in zip(queries[MIN_SAMPLES:], truths[MIN_SAMPLES:], strict=True):
        assert estimator.measure(sample(harness, query, [*truth[:8], 9999, 9998])) == pytest.approx(0.8)
    estimate = estimator.estimate(harness.collection.id)
    assert estimate is not None
    assert estimate.recall == pytest.approx(0.9)
    assert estimate.advice == 128
    assert observability.RECALL_ESTIMATE.labels("c")._value.get() == pytest.approx(0.9)
    # Another ef_search: the window starts again.
    estimator.measure(sample(harness, queries[0], truths[0], ef=128))
    estimate = estimator.estimate(harness.collection.id)
    assert estimate is not None
    assert (estimate.recall, estimate.samples, estimate.ef_search, estimate.advice) == (1.0, 1, 128, None)


def test_no_estimate_and_no_advice_before_enough_samples(harness: Harness) -> None:
    estimator = RecallEstimator(sample_rate=1.0, target=0.95)
    assert estimator.estimate(harness.collection.id) is None
    query = random_vectors(1, 16, 2)[0]
    estimator.measure(sample(harness, query, [9999]))
    estimate = estimator.estimate(harness.collection.id)
    assert estimate is not None
    assert estimate.recall == 0.0
    assert estimate.advice is None  # one sample is not enough to advise


def test_sampling_takes_about_its_share_and_a_full_queue_drops(harness: Harness) -> None:
    query = random_vectors(1, 16, 3)[0]
    never = RecallEstimator(sample_rate=0.0, target=0.95)
    assert not any(never.offer(harness.collection, query, 10, [1]) for _ in range(1000))
    some = RecallEstimator(sample_rate=0.05, target=0.95, seed=7)
    taken = sum(some.offer(harness.collection, query, 10, [1]) for _ in range(QUEUE_SIZE))
    assert 2 <= taken <= 30  # about 13 of 256
    # No worker: the queue fills, and what does not fit is dropped and counted.
    every = RecallEstimator(sample_rate=1.0, target=0.95)
    dropped = observability.RECALL_SAMPLES_DROPPED._value.get()
    results = [every.offer(harness.collection, query, 10, [1]) for _ in range(QUEUE_SIZE + 5)]
    assert results.count(True) == QUEUE_SIZE
    assert observability.RECALL_SAMPLES_DROPPED._value.get() == dropped + 5


def test_the_worker_thread_reruns_offered_searches_off_the_caller(harness: Harness) -> None:
    estimator = RecallEstimator(sample_rate=1.0, target=0.95)
    estimator.start()
    try:
        queries = random_vectors(30, 16, 4)
        for query in queries:
            found = harness.collection.graph.search(query, 10)
            assert found is not None
            assert estimator.offer(harness.collection, query, 10, found[0])
        deadline = time.monotonic() + 10
        while (estimate := estimator.estimate(harness.collection.id)) is None or estimate.samples < len(queries):
            assert time.monotonic() < deadline, "the worker did not re-run the searches"
            time.sleep(0.01)
        assert estimate.recall > 0.9  # the graph of 500 points at ef 64 finds nearly every true neighbour
    finally:
        estimator.stop()
    assert estimator._worker is None


def test_the_recall_settings_come_from_the_environment() -> None:
    storage = load_settings(
        environ={"AKIDB_STORAGE_RECALL_SAMPLE_RATE": "0.05", "AKIDB_STORAGE_RECALL_TARGET": "0.9"}
    ).storage
    assert (storage.recall_sample_rate, storage.recall_target) == (0.05, 0.9)
    defaults = load_settings(environ={}).storage
    assert (defaults.recall_sample_rate, defaults.recall_target) == (0.01, 0.95)

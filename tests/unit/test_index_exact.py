"""ExactVectors: every live vector in one packed matrix, searched exactly over all or a chosen subset."""

from __future__ import annotations

import numpy as np
import pytest

from akidb.storage.exact import ExactVectors
from tests.oracle import brute_distances


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
@pytest.mark.parametrize("seed", range(8))
def test_churn_keeps_the_exact_top_k_over_all_and_over_subsets(metric: str, seed: int) -> None:
    """Upserts, replacements and deletes (which move rows around); every search, over all vectors or over a
    random subset of labels (some unknown), equals brute force over the live vectors."""
    rng = np.random.default_rng(seed)
    dim = int(rng.integers(4, 17))
    exact = ExactVectors(dimension=dim, metric=metric)
    live: dict[int, np.ndarray] = {}
    next_label = 0
    for _ in range(40):
        if rng.random() < 0.6:
            count = int(rng.integers(1, 21))
            reuse = [label for label in live if rng.random() < 0.2][:count]
            labels = reuse + list(range(next_label, next_label + count - len(reuse)))
            next_label += count - len(reuse)
            vectors = rng.standard_normal((len(labels), dim)).astype(np.float32)
            exact.upsert(labels, vectors)
            live.update(zip(labels, vectors, strict=True))
        else:
            gone = [label for label in live if rng.random() < 0.4] + [next_label + 5]
            exact.delete(gone)
            for label in gone:
                live.pop(label, None)
        assert exact.count == len(live)
        if not live:
            assert exact.search(rng.standard_normal(dim).astype(np.float32), 5) == ([], [])
            continue
        query = rng.standard_normal(dim).astype(np.float32)
        for subset in (None, [label for label in live if rng.random() < 0.5] + [next_label + 99]):
            keys = list(live) if subset is None else [label for label in subset if label in live]
            found, distances = exact.search(query, 5, None if subset is None else np.asarray(subset, np.int64))
            assert len(found) == min(5, len(keys))
            if not keys:
                continue
            brute = brute_distances(metric, query, np.stack([live[key] for key in keys]))
            np.testing.assert_allclose(distances, np.sort(brute)[: len(found)], rtol=1e-4, atol=1e-4)
            assert set(found) <= set(keys)


def test_equal_vectors_come_back_in_label_order() -> None:
    exact = ExactVectors(dimension=3, metric="l2")
    exact.upsert([7, 3, 5], np.ones((3, 3), np.float32))
    assert exact.search(np.ones(3, np.float32), 3)[0] == [3, 5, 7]


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_changed_tells_which_vectors_differ_from_what_is_held(metric: str) -> None:
    rng = np.random.default_rng(3)
    exact = ExactVectors(dimension=4, metric=metric)
    held = rng.standard_normal((3, 4)).astype(np.float32)
    exact.upsert([0, 1, 2], held)
    exact.delete([2])
    other = held.copy()
    other[1, 0] += 1e-3
    # 0 the same, 1 moved, 2 deleted (holds none), 9 never seen: only 0 is unchanged.
    assert exact.changed([0, 1, 2, 9], np.stack([held[0], other[1], held[2], held[0]])) == [False, True, True, True]
    if metric == "cosine":  # compared as stored: normalised
        assert exact.changed([0], held[:1] * 2) == [False]

"""Searches (at the collection's ef and at their own) racing upserts, deletes and checkpoints."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from akidb.storage.index import HnswIndex
from akidb.storage.records import HnswParams


def test_concurrent_searches_writes_and_saves_stay_consistent(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    dimension = 16
    index = HnswIndex(dimension=dimension, metric="l2", params=HnswParams(16, 100, 32), capacity=64)
    vectors = rng.standard_normal((3000, dimension)).astype(np.float32)
    errors: list[BaseException] = []
    writing = threading.Event()
    writing.set()

    def writer() -> None:
        try:
            for start in range(0, 3000, 100):
                labels = list(range(start, start + 100))
                index.upsert(labels, vectors[start : start + 100], is_new=[True] * 100, seq=start + 100)
                index.delete(labels[:10], seq=start + 100)  # ten of each batch go again
                if start % 1000 == 0:
                    index.save(tmp_path)
        except BaseException as exc:
            errors.append(exc)
        finally:
            writing.clear()

    def reader(own_ef: bool) -> None:
        try:
            while writing.is_set():
                probe = rng.standard_normal(dimension).astype(np.float32)
                labels, distances = index.search(probe, 10, 200 if own_ef else None)
                assert len(labels) == len(set(labels))
                assert distances == sorted(distances)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader, args=(own_ef,)) for own_ef in (False, False, True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors[0]
    assert index.live_count == 3000 - 300
    deleted = {label for start in range(0, 3000, 100) for label in range(start, start + 10)}
    for row in rng.choice(3000, 50, replace=False):
        labels, distances = index.search(vectors[row], 1)
        if row in deleted:
            assert labels[0] != row
        else:
            assert labels[0] == row
            assert distances[0] < 1e-6
    assert index._index.ef == 32  # custom-ef searches restored the collection's ef

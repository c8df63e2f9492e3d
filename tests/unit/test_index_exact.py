"""Small collections are searched exactly: the answers a user of a small collection rightly expects."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from akidb.storage.db import create_db_engine, migrate
from akidb.storage.index import HnswIndex, open_index
from akidb.storage.repositories import HnswParams, NewDocument, Store
from tests.oracle import brute_distances

PARAMS = HnswParams(m=16, ef_construction=200, ef_search=64)


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
@pytest.mark.parametrize("seed", range(12))
def test_churn_never_hides_a_live_vector(metric: str, seed: int) -> None:
    """Upserts, replacements and deletes of the kind that leave HNSW nodes unreachable (seen in ~3% of such
    runs with graph search); with exact search every live vector finds itself and top-k is the exact top-k."""
    rng = np.random.default_rng(seed)
    dim = int(rng.integers(4, 17))
    index = HnswIndex(dimension=dim, metric=metric, params=PARAMS)
    labels_of: dict[int, int] = {}
    live: dict[int, np.ndarray] = {}
    next_label = 0
    for step in range(40):
        if rng.random() < 0.6:
            docs = rng.choice(48, size=int(rng.integers(1, 21)), replace=False)
            vectors = rng.standard_normal((len(docs), dim)).astype(np.float32)
            labels, is_new = [], []
            for doc in docs:
                if doc not in labels_of:
                    labels_of[doc] = next_label
                    next_label += 1
                    is_new.append(True)
                else:
                    is_new.append(False)
                labels.append(labels_of[doc])
            index.upsert(labels, vectors, is_new=is_new, seq=step)
            live.update(zip(labels, vectors, strict=True))
        else:
            gone = [labels_of.pop(doc) for doc in list(labels_of) if rng.random() < 0.4]
            index.delete(gone, seq=step)
            for label in gone:
                live.pop(label)
        assert index.exact
        assert index.live_count == len(live)
        if not live:
            continue
        keys = list(live)
        matrix = np.stack([live[key] for key in keys])
        for label, vector in live.items():
            found, distances = index.search(vector, 5)
            exact = brute_distances(metric, vector, matrix)
            assert len(found) == min(5, len(live))
            np.testing.assert_allclose(distances, np.sort(exact)[: len(found)], rtol=1e-4, atol=1e-4)
            if metric != "ip":  # under ip another vector can beat a vector's own score
                assert found[0] == label or distances[0] <= 1e-5


def test_growing_past_the_threshold_hands_over_to_the_graph() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((80, 8)).astype(np.float32)
    index = HnswIndex(dimension=8, metric="l2", params=PARAMS, exact_max=50)
    index.upsert(list(range(40)), vectors[:40], is_new=[True] * 40, seq=40)
    assert index.exact
    index.upsert(list(range(40, 80)), vectors[40:], is_new=[True] * 40, seq=80)
    assert not index.exact
    hits = sum(index.search(vectors[i], 1)[0][0] == i for i in range(80))
    assert hits >= 76  # the graph now answers: approximate, but it still finds nearly every vector


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    migrate(engine)
    yield Store(engine)
    engine.dispose()


@pytest.mark.parametrize(("documents", "exact_max", "exact"), [(30, 50, True), (80, 50, False)])
def test_reopening_from_a_checkpoint_decides_by_size(
    store: Store, tmp_path: Path, documents: int, exact_max: int, exact: bool
) -> None:
    rng = np.random.default_rng(1)
    record = store.create_collection(
        name="c", embedding_model=None, dimension=8, metric="cosine", hnsw=PARAMS, metadata={}
    )
    vectors = rng.standard_normal((documents, 8)).astype(np.float32)
    rows = [NewDocument(id=f"d{i}", text=None, metadata={}, vector=v) for i, v in enumerate(vectors)]
    outcome = store.upsert_documents(record.id, rows)
    directory = tmp_path / "index"
    first = open_index(
        store, record.id, directory, dimension=8, metric="cosine", params=PARAMS, last_seq=0, exact_max=exact_max
    )
    first.save(directory)
    store.delete_documents(record.id, ["d0"])  # after the checkpoint: replayed as a tombstone
    reopened = open_index(
        store,
        record.id,
        directory,
        dimension=8,
        metric="cosine",
        params=PARAMS,
        last_seq=outcome.last_seq + 1,
        exact_max=exact_max,
    )
    assert reopened.exact is exact
    assert reopened.live_count == documents - 1
    labels, distances = reopened.search(vectors[5], 3)
    assert labels[0] == outcome.labels[5]
    assert distances[0] == pytest.approx(0.0, abs=1e-5)
    assert outcome.labels[0] not in reopened.search(vectors[0], documents)[0]

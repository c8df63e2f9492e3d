"""HnswIndex and open_index against a real SQLite Store: checkpoints, catch-up, rebuilds, growth, deleted slots."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from akidb.storage.db import create_db_engine, migrate
from akidb.storage.index import HnswIndex, open_index
from akidb.storage.records import HnswParams, NewDocument
from akidb.storage.repositories import Store
from tests.oracle import brute_distances

PARAMS = HnswParams(m=16, ef_construction=200, ef_search=64)
CHECKPOINT = re.compile(r"^hnsw-(\d{20})\.bin$")

Vector = npt.NDArray[np.float32]


def random_vectors(n: int, dim: int, seed: int) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


class Harness:
    """One collection in a real store, with the index kept in step the way DocumentService does it."""

    def __init__(self, root: Path, *, metric: str = "l2", dimension: int = 8) -> None:
        self.engine = create_db_engine(f"sqlite:///{root / 'db.sqlite3'}")
        migrate(self.engine)
        self.store = Store(self.engine)
        self.metric = metric
        self.dimension = dimension
        record = self.store.create_collection(
            name="c", embedding_model=None, dimension=dimension, metric=metric, hnsw=PARAMS, metadata={}
        )
        self.collection_id = record.id
        self.directory = root / "indexes" / record.uid
        self.index = self.open()

    def open(self) -> HnswIndex:
        """What CollectionService._open does: last_seq first, then the index from checkpoint + rows."""
        last_seq = self.store.last_seq(self.collection_id)
        return open_index(
            self.store,
            self.collection_id,
            self.directory,
            dimension=self.dimension,
            metric=self.metric,
            params=PARAMS,
            last_seq=last_seq,
        )

    def upsert(self, docs: dict[str, Vector], index: HnswIndex | None = None) -> None:
        index = index or self.index
        rows = [NewDocument(id=doc_id, text=None, metadata={}, vector=vector) for doc_id, vector in docs.items()]
        outcome = self.store.upsert_documents(self.collection_id, rows)
        index.upsert(outcome.labels, np.stack(list(docs.values())), is_new=outcome.is_new, seq=outcome.last_seq)

    def delete(self, ids: list[str], index: HnswIndex | None = None) -> None:
        index = index or self.index
        outcome = self.store.delete_documents(self.collection_id, ids)
        index.delete(outcome.labels, seq=outcome.last_seq)

    def rows(self) -> dict[int, tuple[str, Vector]]:
        """label -> (id, vector) of every live document."""
        docs = self.store.list_documents(self.collection_id, after_id=None, limit=1_000_000, with_vector=True)
        return {doc.label: (doc.id, doc.vector) for doc in docs if doc.vector is not None}

    def label_of(self, doc_id: str) -> int:
        return self.store.get_document(self.collection_id, doc_id, with_vector=False).label

    def checkpoints(self) -> list[str]:
        return sorted(name for name in os.listdir(self.directory) if CHECKPOINT.match(name))

    def assert_index_matches_rows(self, index: HnswIndex, *, queries: int = 5) -> None:
        """The index holds exactly the live rows, each once, with the row's vector."""
        rows = self.rows()
        assert index.live_count == len(rows)
        assert index.applied_seq == self.store.last_seq(self.collection_id)
        rng = np.random.default_rng(1234)
        probes = [rng.standard_normal(self.dimension).astype(np.float32) for _ in range(queries)]
        probes += [vector for _, vector in list(rows.values())[:queries]]
        for query in probes:
            labels, distances = index.search(query, len(rows) + 10)
            assert len(labels) == len(set(labels)), "a label came back twice"
            assert set(labels) == set(rows)
            assert distances == sorted(distances)
            expected = brute_distances(self.metric, query, np.stack([rows[label][1] for label in labels]))
            np.testing.assert_allclose(distances, expected, rtol=1e-4, atol=1e-4)
        if self.metric == "l2" and rows:
            # hnswlib keeps l2 vectors as given, so the stored data must be the row's latest vector.
            labels = sorted(rows)
            stored = np.asarray(index._index.get_items(labels), dtype=np.float32)
            np.testing.assert_array_equal(stored, np.stack([rows[label][1] for label in labels]))

    def close(self) -> None:
        self.engine.dispose()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    h.close()


class Spy:
    """Records the `after_seq` each catch-up query was asked for."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.vectors_since: list[int] = []
        self.tombstones_since: list[int] = []
        vectors_since, tombstones_since = store.vectors_since, store.tombstones_since

        def spy_vectors(collection_id: int, after_seq: int, batch: int = 5000) -> Any:
            self.vectors_since.append(after_seq)
            return vectors_since(collection_id, after_seq, batch)

        def spy_tombstones(collection_id: int, after_seq: int) -> list[int]:
            self.tombstones_since.append(after_seq)
            return tombstones_since(collection_id, after_seq)

        monkeypatch.setattr(store, "vectors_since", spy_vectors)
        monkeypatch.setattr(store, "tombstones_since", spy_tombstones)


# --- checkpoints -------------------------------------------------------------------------------------


def test_save_writes_a_seq_named_checkpoint_and_removes_older_ones(harness: Harness) -> None:
    vectors = random_vectors(30, 8, seed=1)
    harness.upsert({f"d{i}": vectors[i] for i in range(10)})
    assert harness.index.dirty

    seq = harness.index.save(harness.directory)
    assert seq == harness.store.last_seq(harness.collection_id) == 10
    assert harness.checkpoints() == ["hnsw-00000000000000000010.bin"]
    assert os.listdir(harness.directory) == ["hnsw-00000000000000000010.bin"], "temp file left behind"
    assert not harness.index.dirty

    harness.upsert({f"d{i}": vectors[i] for i in range(10, 25)})
    harness.delete(["d0", "d1"])
    seq2 = harness.index.save(harness.directory)
    assert seq2 == harness.store.last_seq(harness.collection_id) == 27
    assert harness.checkpoints() == [f"hnsw-{seq2:020d}.bin"]
    assert os.listdir(harness.directory) == [f"hnsw-{seq2:020d}.bin"]

    # Saving again at the same seq replaces the file in place.
    assert harness.index.save(harness.directory) == seq2
    assert harness.checkpoints() == [f"hnsw-{seq2:020d}.bin"]

    loaded = HnswIndex.load_checkpoint(harness.directory, dimension=8, metric="l2", params=PARAMS)
    assert loaded is not None
    assert loaded.applied_seq == loaded.saved_seq == seq2
    assert not loaded.dirty
    loaded.reconcile_free_slots(len(harness.rows()))
    harness.assert_index_matches_rows(loaded)


def test_save_is_atomic_when_the_rename_fails(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = random_vectors(20, 8, seed=2)
    harness.upsert({f"d{i}": vectors[i] for i in range(10)})
    first = harness.index.save(harness.directory)
    before = (harness.directory / f"hnsw-{first:020d}.bin").read_bytes()

    harness.upsert({f"d{i}": vectors[i] for i in range(10, 20)})

    def crash(src: Any, dst: Any) -> None:
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr("akidb.storage.index.os.replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        harness.index.save(harness.directory)
    monkeypatch.undo()

    # The old checkpoint is untouched and still the only one; the half-done temp file is never loaded.
    assert harness.checkpoints() == [f"hnsw-{first:020d}.bin"]
    assert (harness.directory / f"hnsw-{first:020d}.bin").read_bytes() == before
    assert harness.index.dirty
    loaded = HnswIndex.load_checkpoint(harness.directory, dimension=8, metric="l2", params=PARAMS)
    assert loaded is not None
    assert loaded.applied_seq == first

    reopened = harness.open()
    harness.assert_index_matches_rows(reopened)
    assert reopened.live_count == 20


def test_a_checkpoint_of_an_empty_index_loads_and_takes_writes(harness: Harness) -> None:
    # hnswlib loads an empty file with room for zero elements: the first upsert has to grow it.
    assert harness.index.save(harness.directory) == 0
    assert harness.checkpoints() == ["hnsw-00000000000000000000.bin"]
    vectors = random_vectors(30, 8, seed=14)
    harness.upsert({"a": vectors[0], "b": vectors[0]})  # written after the checkpoint, same vector twice
    reopened = harness.open()
    harness.assert_index_matches_rows(reopened)
    harness.upsert({f"d{i}": vectors[i] for i in range(1, 30)}, index=reopened)
    harness.delete(["a", "d3"], index=reopened)
    harness.assert_index_matches_rows(reopened)
    assert reopened.live_count == 29


def test_load_checkpoint_without_a_directory_or_files_returns_none(tmp_path: Path) -> None:
    assert HnswIndex.load_checkpoint(tmp_path / "missing", dimension=8, metric="l2", params=PARAMS) is None
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "hnsw-1.bin").write_bytes(b"not a checkpoint name")
    assert HnswIndex.load_checkpoint(tmp_path / "empty", dimension=8, metric="l2", params=PARAMS) is None


# --- catch-up ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_open_replays_rows_and_tombstones_written_after_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, metric: str
) -> None:
    harness = Harness(tmp_path, metric=metric)
    vectors = random_vectors(60, 8, seed=3)
    harness.upsert({f"d{i}": vectors[i] for i in range(50)})
    harness.delete(["d40", "d41"])  # deleted before the checkpoint: slots already free in the file
    checkpoint = harness.index.save(harness.directory)
    harness.store.purge_tombstones(harness.collection_id, checkpoint)  # what CollectionService.save_index does

    old_label_d3 = harness.label_of("d3")
    label_d7 = harness.label_of("d7")
    replacement = vectors[55] * 3.0
    harness.upsert({"d3": replacement})  # replaced after the checkpoint
    harness.delete(["d7"])  # deleted after the checkpoint
    harness.upsert({"n1": vectors[51], "n2": vectors[52]})  # inserted after the checkpoint...
    harness.delete(["n2"])  # ...one of them deleted again
    harness.upsert({"d10": vectors[53]})
    harness.delete(["d10", "never-existed"])  # replaced, then deleted
    harness.upsert({"d40": vectors[54]})  # an id deleted before the checkpoint comes back with a new label
    live = harness.rows()
    assert len(live) == 48  # 50 - d40 - d41, then - d7 + n1 - d10 + d40

    spy = Spy(harness.store, monkeypatch)
    reopened = harness.open()
    assert spy.vectors_since == [checkpoint], "the checkpoint was not used"
    assert spy.tombstones_since == [checkpoint]

    harness.assert_index_matches_rows(reopened)
    assert harness.label_of("d3") == old_label_d3  # replaced in place, same label
    labels, distances = reopened.search(replacement, len(live) + 5)
    assert labels.count(old_label_d3) == 1
    assert labels[0] == old_label_d3
    assert distances[0] == pytest.approx(0.0 if metric != "ip" else float(1.0 - replacement @ replacement), abs=1e-3)
    assert label_d7 not in labels
    # The vector the index holds for d3 is the new one (cosine normalises, so compare directions).
    held = np.asarray(reopened._index.get_items([old_label_d3]), dtype=np.float64)[0]
    expected = replacement / np.linalg.norm(replacement) if metric == "cosine" else replacement
    np.testing.assert_allclose(held, expected, rtol=1e-5, atol=1e-5)

    # A checkpoint of the caught-up index needs no replay at all.
    reopened.save(harness.directory)
    again = harness.open()
    harness.assert_index_matches_rows(again)
    harness.close()


def test_open_with_a_checkpoint_and_nothing_to_replay_is_clean(harness: Harness) -> None:
    vectors = random_vectors(20, 8, seed=4)
    harness.upsert({f"d{i}": vectors[i] for i in range(20)})
    harness.delete(["d0", "d5"])
    seq = harness.index.save(harness.directory)
    reopened = harness.open()
    assert reopened.applied_seq == reopened.saved_seq == seq
    assert not reopened.dirty
    harness.assert_index_matches_rows(reopened)
    # The two deleted slots are free: two new documents reuse them rather than growing the index.
    harness.upsert({"n0": vectors[0], "n1": vectors[5]}, index=reopened)
    assert int(reopened._index.element_count) == 20
    harness.assert_index_matches_rows(reopened)


# --- damaged checkpoints ---------------------------------------------------------------------------------


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(np.random.default_rng(5).bytes(len(data)))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "tail-chopped":
        path.write_bytes(data[:-7])
    else:  # pragma: no cover
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty", "tail-chopped"])
def test_a_damaged_checkpoint_is_ignored_and_the_index_rebuilt(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    vectors = random_vectors(40, 8, seed=6)
    harness.upsert({f"d{i}": vectors[i] for i in range(30)})
    harness.delete(["d1", "d2", "d3"])
    seq = harness.index.save(harness.directory)
    harness.store.purge_tombstones(harness.collection_id, seq)
    harness.upsert({"d4": vectors[30], "late": vectors[31]})
    harness.delete(["d5"])
    _damage(harness.directory / f"hnsw-{seq:020d}.bin", how)

    spy = Spy(harness.store, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="akidb.storage.index"):
        reopened = harness.open()
    assert spy.vectors_since == [-1], "a damaged checkpoint must lead to a full rebuild"
    assert any("unreadable" in record.getMessage() for record in caplog.records)
    harness.assert_index_matches_rows(reopened)
    assert reopened.live_count == 30 - 3 + 1 - 1
    assert reopened.dirty  # the rebuilt index gets checkpointed again

    # The next save replaces the damaged file.
    new_seq = reopened.save(harness.directory)
    assert harness.checkpoints() == [f"hnsw-{new_seq:020d}.bin"]
    harness.assert_index_matches_rows(harness.open())


def test_a_damaged_newest_checkpoint_falls_back_to_an_older_one(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    vectors = random_vectors(40, 8, seed=7)
    harness.upsert({f"d{i}": vectors[i] for i in range(20)})
    first = harness.index.save(harness.directory)
    kept = (harness.directory / f"hnsw-{first:020d}.bin").read_bytes()
    harness.upsert({f"d{i}": vectors[i] for i in range(20, 30)})
    harness.upsert({"d0": vectors[35]})
    harness.delete(["d1", "d25"])
    second = harness.index.save(harness.directory)
    # A crash between the rename and the clean-up leaves both; then the newer one goes bad.
    (harness.directory / f"hnsw-{first:020d}.bin").write_bytes(kept)
    _damage(harness.directory / f"hnsw-{second:020d}.bin", "truncated")

    spy = Spy(harness.store, monkeypatch)
    reopened = harness.open()
    assert spy.vectors_since == [first]
    harness.assert_index_matches_rows(reopened)
    assert reopened.live_count == 30 - 2


def test_a_missing_index_directory_is_rebuilt_from_rows(harness: Harness) -> None:
    vectors = random_vectors(10, 8, seed=8)
    harness.upsert({f"d{i}": vectors[i] for i in range(10)})
    harness.delete(["d9"])
    assert not harness.directory.exists()  # nothing saved yet
    reopened = harness.open()
    harness.assert_index_matches_rows(reopened)
    assert reopened.live_count == 9


# --- growth --------------------------------------------------------------------------------------------


def test_growth_past_the_initial_capacity(harness: Harness) -> None:
    vectors = random_vectors(3000, 8, seed=9)
    assert int(harness.index._index.get_max_elements()) == 1024
    for start in range(0, 3000, 500):
        harness.upsert({f"d{i}": vectors[i] for i in range(start, start + 500)})
    index = harness.index
    assert index.live_count == 3000
    assert int(index._index.get_max_elements()) >= 3000

    label_to_row = {label: int(doc_id[1:]) for label, (doc_id, _) in harness.rows().items()}
    rng = np.random.default_rng(10)
    recalls = []
    for _ in range(20):
        query = rng.standard_normal(8).astype(np.float32)
        labels, distances = index.search(query, 10)
        assert len(labels) == len(set(labels)) == 10
        assert distances == sorted(distances)
        exact = np.argsort(brute_distances("l2", query, vectors))[:10]
        recalls.append(len({label_to_row[label] for label in labels} & set(exact.tolist())) / 10)
    assert np.mean(recalls) >= 0.95
    for row in (0, 1023, 1024, 2999):
        labels, distances = index.search(vectors[row], 1)
        assert label_to_row[labels[0]] == row
        assert distances[0] == pytest.approx(0.0, abs=1e-6)

    # Both ways of opening a big collection work: rebuild (capacity from the row count) and checkpoint.
    rebuilt = harness.open()
    assert rebuilt.live_count == 3000
    assert int(rebuilt._index.get_max_elements()) >= 3000
    index.save(harness.directory)
    loaded = harness.open()
    assert loaded.live_count == 3000
    harness.upsert({f"x{i}": vectors[i] for i in range(50)}, index=loaded)
    assert loaded.live_count == 3050


# --- deleted slots and replacements --------------------------------------------------------------------


def test_replacing_a_label_while_deleted_slots_exist_does_not_duplicate(harness: Harness) -> None:
    """hnswlib's replace_deleted=True would move an existing label into a free slot and keep the old one live."""
    vectors = random_vectors(40, 8, seed=11)
    harness.upsert({f"d{i}": vectors[i] for i in range(20)})
    harness.delete([f"d{i}" for i in range(10, 15)])  # five free slots
    target_label = harness.label_of("d2")

    harness.upsert({"d2": vectors[30]})  # a replacement on its own
    harness.assert_index_matches_rows(harness.index)
    assert harness.index.live_count == 15

    harness.upsert({"d3": vectors[31], "n0": vectors[32], "d4": vectors[33], "n1": vectors[34]})  # mixed batch
    harness.assert_index_matches_rows(harness.index)
    assert harness.index.live_count == 17
    assert int(harness.index._index.element_count) == 20, "new labels must reuse the free slots"

    labels, _ = harness.index.search(vectors[30], 100)
    assert labels.count(target_label) == 1
    assert labels[0] == target_label
    assert len(labels) == len(set(labels)) == 17

    # The same through a checkpoint and catch-up.
    checkpoint = harness.index.save(harness.directory)
    harness.store.purge_tombstones(harness.collection_id, checkpoint)
    harness.delete(["d5", "d6"])
    harness.upsert({"d2": vectors[35], "d7": vectors[36], "n2": vectors[37]})
    reopened = harness.open()
    harness.assert_index_matches_rows(reopened)
    assert reopened.live_count == 17 - 2 + 1
    labels, _ = reopened.search(vectors[35], 100)
    assert labels.count(target_label) == 1
    assert labels[0] == target_label
    # And once more on the reopened index, whose free slots came from reconcile_free_slots.
    harness.delete(["d8"], index=reopened)
    harness.upsert({"d2": vectors[38], "n3": vectors[39]}, index=reopened)
    harness.assert_index_matches_rows(reopened)
    assert reopened.live_count == 16


def test_live_count_tracks_deletes_and_repeated_deletes(harness: Harness) -> None:
    vectors = random_vectors(10, 8, seed=12)
    harness.upsert({f"d{i}": vectors[i] for i in range(10)})
    labels = [harness.label_of(f"d{i}") for i in range(3)]
    harness.delete(["d0", "d1", "d2"])
    assert harness.index.live_count == 7
    # A replayed delete (same labels again) changes nothing.
    harness.index.delete(labels, seq=harness.store.last_seq(harness.collection_id))
    harness.index.delete([10_000], seq=harness.store.last_seq(harness.collection_id))
    assert harness.index.live_count == 7
    harness.assert_index_matches_rows(harness.index)


# --- search ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_search_with_k_larger_than_live_count_returns_all_live(tmp_path: Path, metric: str) -> None:
    harness = Harness(tmp_path, metric=metric, dimension=4)
    vectors = random_vectors(10, 4, seed=13)
    query = vectors[0] + 0.1
    assert harness.index.search(query, 5) == ([], [])

    harness.upsert({f"d{i}": vectors[i] for i in range(10)})
    harness.delete(["d1", "d4", "d8"])
    rows = harness.rows()
    labels, distances = harness.index.search(query, 100)
    assert sorted(labels) == sorted(rows)
    assert distances == sorted(distances)
    expected = brute_distances(metric, query, np.stack([rows[label][1] for label in labels]))
    np.testing.assert_allclose(distances, expected, rtol=1e-4, atol=1e-4)
    # An explicit ef below k is raised to k; the index's own ef is restored afterwards.
    labels, _ = harness.index.search(query, 100, ef=1)
    assert sorted(labels) == sorted(rows)
    assert harness.index._index.ef == PARAMS.ef_search

    harness.delete([f"d{i}" for i in range(10)])
    assert harness.index.live_count == 0
    assert harness.index.search(query, 5) == ([], [])
    harness.close()

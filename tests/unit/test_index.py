"""HnswIndex and open_collection against a real SQLite Store: seq-named checkpoints, catch-up from a checkpoint
(only the rows written after it), deletes dropped on reopen without tombstones, damaged checkpoints, growth and
deleted slots."""

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
from sqlalchemy import text

from akidb.storage.changes import ChangeFeed
from akidb.storage.collection import OpenCollection
from akidb.storage.db import create_db_engine, migrate
from akidb.storage.index import HnswIndex, document_label
from akidb.storage.open_collections import open_collection
from akidb.storage.records import HnswParams, NewDocument
from akidb.storage.repositories import Store
from tests.oracle import brute_distances

PARAMS = HnswParams(m=16, ef_construction=200, ef_search=64)
CHECKPOINT = re.compile(r"^hnsw-(\d{20})\.bin$")

Vector = npt.NDArray[np.float32]


def random_vectors(n: int, dim: int, seed: int) -> Vector:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


class Harness:
    """One collection in a real store, written through an OpenCollection as DocumentService writes."""

    def __init__(self, root: Path, *, metric: str = "l2", dimension: int = 8) -> None:
        self.engine = create_db_engine(f"sqlite:///{root / 'db.sqlite3'}")
        migrate(self.engine)
        self.store = Store(self.engine)
        self.feed = ChangeFeed(self.engine)
        self.metric = metric
        self.dimension = dimension
        record = self.store.create_collection(
            name="c", embedding_model=None, dimension=dimension, metric=metric, hnsw=PARAMS, metadata={}
        )
        self.collection_id = record.id
        self.index_root = root / "indexes"
        self.directory = self.index_root / record.uid
        self.collection = self.open()

    @property
    def index(self) -> HnswIndex:
        return self.collection.graph

    def open(self) -> OpenCollection:
        """What a starting process does: every row in one snapshot, the newest checkpoint, the replay."""
        return open_collection(self.feed, self.store.get_collection("c"), self.index_root)

    def upsert(self, docs: dict[str, Vector], collection: OpenCollection | None = None) -> None:
        rows = [NewDocument(id=doc_id, text=None, metadata={"id": doc_id}, vector=v) for doc_id, v in docs.items()]
        (collection or self.collection).upsert(self.store, rows)

    def delete(self, ids: list[str], collection: OpenCollection | None = None) -> None:
        (collection or self.collection).delete(self.store, lambda: ids)

    def purge_tombstones(self) -> None:
        """This process is the only replica and has applied everything: every tombstone goes."""
        collection = self.collection
        assert collection.applied_seq == self.store.last_seq(self.collection_id)
        with self.engine.connect() as conn:
            before = conn.execute(text("SELECT purged_seq FROM collections")).scalar_one()
            highest = conn.execute(text("SELECT max(seq) FROM tombstones")).scalar_one()
        self.feed.heartbeat("only", {self.collection_id: collection.applied_seq})
        self.feed.purge_tombstones(timeout_s=60)
        with self.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM tombstones")).scalar_one() == 0
            purged = conn.execute(text("SELECT purged_seq FROM collections")).scalar_one()
        # purged_seq is the highest tombstone purged (unchanged when there was none).
        assert purged == (before if highest is None else highest)

    def rows(self) -> dict[int, tuple[str, Vector, int]]:
        """label -> (id, vector, seq) of every live document."""
        docs = self.store.list_documents(self.collection_id, after_id=None, limit=1_000_000, with_vector=True)
        return {doc.label: (doc.id, doc.vector, doc.seq) for doc in docs if doc.vector is not None}

    def labels_after(self, seq: int) -> list[int]:
        return sorted(label for label, (_, _, row_seq) in self.rows().items() if row_seq > seq)

    def label_of(self, doc_id: str) -> int:
        return self.store.get_document(self.collection_id, doc_id, with_vector=False).label

    def checkpoints(self) -> list[str]:
        return sorted(name for name in os.listdir(self.directory) if CHECKPOINT.match(name))

    def assert_matches_rows(self, collection: OpenCollection, *, queries: int = 5) -> None:
        """The collection holds exactly the live rows, each once, with the row's vector."""
        rows = self.rows()
        index = collection.graph
        assert index.live_count == collection.exact.count == collection.metadata.live_count == len(rows)
        assert index.applied_seq == collection.applied_seq == self.store.last_seq(self.collection_id)
        alive = collection.metadata.alive()
        assert sorted(collection.metadata.ids_at(alive)) == sorted(doc_id for doc_id, _, _ in rows.values())
        rng = np.random.default_rng(1234)
        probes = [rng.standard_normal(self.dimension).astype(np.float32) for _ in range(queries)]
        probes += [vector for _, vector, _ in list(rows.values())[:queries]]
        for query in probes:
            labels, distances = index.search(query, len(rows) + 10)
            assert len(labels) == len(set(labels)), "a label came back twice"
            assert set(labels) == set(rows)
            assert distances == sorted(distances)
            expected = brute_distances(self.metric, query, np.stack([rows[label][1] for label in labels]))
            np.testing.assert_allclose(distances, expected, rtol=1e-4, atol=1e-4)
            exact_labels, _ = collection.exact.search(query, len(rows) + 10)
            assert sorted(exact_labels) == sorted(rows)
        if self.metric == "l2" and rows:
            # hnswlib keeps l2 vectors as given, so the stored data must be the row's latest vector.
            labels = sorted(rows)
            found, stored = index.vectors_of(labels)
            assert found == labels
            np.testing.assert_array_equal(stored, np.stack([rows[label][1] for label in labels]))

    def close(self) -> None:
        self.engine.dispose()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    h.close()


class GraphSpy:
    """Records the labels every HnswIndex is asked to upsert and delete (what an open replays)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.upserted: list[int] = []
        self.deleted: list[int] = []
        upsert, delete = HnswIndex.upsert, HnswIndex.delete

        def spy_upsert(index: HnswIndex, labels: list[int], vectors: Any, *, is_new: list[bool], seq: int) -> None:
            self.upserted.extend(labels)
            upsert(index, labels, vectors, is_new=is_new, seq=seq)

        def spy_delete(index: HnswIndex, labels: list[int], *, seq: int) -> None:
            self.deleted.extend(labels)
            delete(index, labels, seq=seq)

        monkeypatch.setattr(HnswIndex, "upsert", spy_upsert)
        monkeypatch.setattr(HnswIndex, "delete", spy_delete)


def assert_deleted_in_graph(index: HnswIndex, labels: list[int]) -> None:
    points = [int(x) for x in index._index.get_ids_list() if document_label(int(x)) in set(labels)]
    assert {document_label(point) for point in points} == set(labels)
    for point in points:  # every version of each
        with pytest.raises(RuntimeError):  # hnswlib: "Label not found" for a deleted label
            index._index.get_items([point])


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
    assert harness.collection.save(only_dirty=True) is False  # nothing new: no write

    harness.upsert({f"d{i}": vectors[i] for i in range(10, 25)})
    harness.delete(["d0", "d1"])
    assert harness.collection.save(only_dirty=True) is True
    seq2 = harness.index.saved_seq
    assert seq2 == harness.store.last_seq(harness.collection_id) == 27
    assert os.listdir(harness.directory) == [f"hnsw-{seq2:020d}.bin"]

    # Saving again at the same seq replaces the file in place.
    assert harness.index.save(harness.directory) == seq2
    assert harness.checkpoints() == [f"hnsw-{seq2:020d}.bin"]

    loaded = HnswIndex.load_checkpoint(harness.directory, dimension=8, metric="l2", params=PARAMS)
    assert loaded is not None
    assert loaded.applied_seq == loaded.saved_seq == seq2
    assert not loaded.dirty
    loaded.reconcile_free_slots(len(harness.rows()))
    assert loaded.live_count == 23
    harness.assert_matches_rows(harness.open())


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
    spy = GraphSpy(monkeypatch)
    reopened = harness.open()
    assert reopened.graph.saved_seq == first
    assert sorted(spy.upserted) == harness.labels_after(first) != []
    harness.assert_matches_rows(reopened)
    assert reopened.graph.live_count == 20


def test_a_checkpoint_of_an_empty_index_loads_and_takes_writes(harness: Harness) -> None:
    # hnswlib loads an empty file with room for zero elements: the first upsert has to grow it.
    assert harness.index.save(harness.directory) == 0
    assert harness.checkpoints() == ["hnsw-00000000000000000000.bin"]
    vectors = random_vectors(30, 8, seed=14)
    harness.upsert({"a": vectors[0], "b": vectors[0]})  # written after the checkpoint, same vector twice
    reopened = harness.open()
    assert reopened.graph.saved_seq == 0
    harness.assert_matches_rows(reopened)
    harness.upsert({f"d{i}": vectors[i] for i in range(1, 30)}, reopened)
    harness.delete(["a", "d3"], reopened)
    harness.assert_matches_rows(reopened)
    assert reopened.graph.live_count == 29


def test_load_checkpoint_without_a_directory_or_files_returns_none(tmp_path: Path) -> None:
    assert HnswIndex.load_checkpoint(tmp_path / "missing", dimension=8, metric="l2", params=PARAMS) is None
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "hnsw-1.bin").write_bytes(b"not a checkpoint name")
    assert HnswIndex.load_checkpoint(tmp_path / "empty", dimension=8, metric="l2", params=PARAMS) is None


# --- catch-up ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_open_replays_only_the_rows_written_after_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, metric: str
) -> None:
    harness = Harness(tmp_path, metric=metric)
    vectors = random_vectors(60, 8, seed=3)
    harness.upsert({f"d{i}": vectors[i] for i in range(50)})
    harness.delete(["d40", "d41"])  # deleted before the checkpoint: slots already free in the file
    checkpoint = harness.index.save(harness.directory)

    old_label_d3 = harness.label_of("d3")
    label_d7, label_d10 = harness.label_of("d7"), harness.label_of("d10")
    replacement = vectors[55] * 3.0
    harness.upsert({"d3": replacement})  # replaced after the checkpoint
    harness.delete(["d7"])  # deleted after the checkpoint
    harness.upsert({"n1": vectors[51], "n2": vectors[52]})  # inserted after the checkpoint...
    label_n2 = harness.label_of("n2")
    harness.delete(["n2"])  # ...one of them deleted again
    harness.upsert({"d10": vectors[53]})
    harness.delete(["d10", "never-existed"])  # replaced, then deleted
    harness.upsert({"d40": vectors[54]})  # an id deleted before the checkpoint comes back with a new label
    # The tombstones of all these deletes are gone: reopening must not need them.
    harness.purge_tombstones()
    live = harness.rows()
    assert len(live) == 48  # 50 - d40 - d41, then - d7 + n1 - d10 + d40

    spy = GraphSpy(monkeypatch)
    reopened = harness.open()
    assert reopened.graph.saved_seq == checkpoint, "the checkpoint was not used"
    replayed = harness.labels_after(checkpoint)
    assert sorted(spy.upserted) == replayed == sorted([old_label_d3, harness.label_of("n1"), harness.label_of("d40")])
    assert {label_d7, label_d10} <= set(spy.deleted)  # dropped: no row holds them
    assert not set(spy.deleted) & set(live)
    assert label_n2 not in spy.deleted  # never in the checkpoint, never replayed
    assert_deleted_in_graph(reopened.graph, [label_d7, label_d10])

    harness.assert_matches_rows(reopened)
    assert harness.label_of("d3") == old_label_d3  # replaced in place, same label
    labels, distances = reopened.graph.search(replacement, len(live) + 5)
    assert labels.count(old_label_d3) == 1
    assert labels[0] == old_label_d3
    assert distances[0] == pytest.approx(0.0 if metric != "ip" else float(1.0 - replacement @ replacement), abs=1e-3)
    assert label_d7 not in labels
    # The vector the index holds for d3 is the new one (cosine normalises, so compare directions).
    held = np.asarray(reopened.graph._index.get_items([old_label_d3]), dtype=np.float64)[0]
    expected = replacement / np.linalg.norm(replacement) if metric == "cosine" else replacement
    np.testing.assert_allclose(held, expected, rtol=1e-5, atol=1e-5)

    # A checkpoint of the caught-up index needs no replay at all.
    reopened.save(only_dirty=True)
    spy.upserted.clear()
    again = harness.open()
    assert spy.upserted == []
    assert not again.graph.dirty
    harness.assert_matches_rows(again)
    harness.close()


def test_reopen_counts_deleted_labels_as_free_slots(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slots of labels deleted before the checkpoint, and of labels dropped at open (their tombstones purged),
    are free: new documents reuse them rather than growing the index."""
    vectors = random_vectors(40, 8, seed=4)
    harness.upsert({f"d{i}": vectors[i] for i in range(20)})
    harness.delete(["d18", "d19"])
    checkpoint = harness.index.save(harness.directory)
    spy = GraphSpy(monkeypatch)
    clean = harness.open()
    assert spy.upserted == []  # nothing to replay
    assert clean.graph.applied_seq == clean.graph.saved_seq == checkpoint
    assert not clean.graph.dirty
    harness.assert_matches_rows(clean)

    doomed = [harness.label_of(f"d{i}") for i in range(6)]
    harness.delete([f"d{i}" for i in range(6)])
    harness.upsert({"x0": vectors[20]})
    harness.purge_tombstones()
    spy.upserted.clear()
    reopened = harness.open()
    assert reopened.graph.saved_seq == checkpoint
    assert spy.upserted == [harness.label_of("x0")]
    assert_deleted_in_graph(reopened.graph, doomed)
    # Deleting them again (a replayed delete), or a label never seen, changes nothing.
    reopened.graph.delete([*doomed, 10_000], seq=reopened.applied_seq)
    harness.assert_matches_rows(reopened)
    assert reopened.graph.live_count == 13
    # The checkpoint's 20 slots (x0 took one of its two free ones), 7 of them free now.
    assert int(reopened.graph._index.element_count) == 20
    harness.upsert({f"y{i}": vectors[21 + i] for i in range(7)}, reopened)
    assert int(reopened.graph._index.element_count) == 20
    harness.upsert({"z": vectors[30]}, reopened)
    assert int(reopened.graph._index.element_count) == 21
    harness.assert_matches_rows(reopened)
    assert reopened.graph.live_count == 21


# --- damaged checkpoints ---------------------------------------------------------------------------------


DAMAGE = {
    "truncated": lambda data: data[: len(data) // 2],
    "garbage": lambda data: np.random.default_rng(5).bytes(len(data)),
    "empty": lambda data: b"",
    "tail-chopped": lambda data: data[:-7],
}


def _damage(path: Path, how: str) -> None:
    path.write_bytes(DAMAGE[how](path.read_bytes()))


@pytest.mark.parametrize("how", list(DAMAGE))
def test_a_damaged_checkpoint_is_ignored_and_the_index_rebuilt(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    vectors = random_vectors(40, 8, seed=6)
    harness.upsert({f"d{i}": vectors[i] for i in range(30)})
    harness.delete(["d1", "d2", "d3"])
    seq = harness.index.save(harness.directory)
    harness.upsert({"d4": vectors[30], "late": vectors[31]})
    harness.delete(["d5"])
    harness.purge_tombstones()
    _damage(harness.directory / f"hnsw-{seq:020d}.bin", how)

    spy = GraphSpy(monkeypatch)
    with caplog.at_level(logging.WARNING):
        reopened = harness.open()
    assert reopened.graph.saved_seq == -1, "a damaged checkpoint must lead to a full rebuild"
    assert sorted(spy.upserted) == sorted(harness.rows()), "a rebuild replays every row"
    messages = [record.getMessage() for record in caplog.records]
    assert any("unreadable" in message for message in messages)
    assert any("rebuilding the index" in message for message in messages)
    harness.assert_matches_rows(reopened)
    assert reopened.graph.live_count == 30 - 3 + 1 - 1
    assert reopened.graph.dirty  # the rebuilt index gets checkpointed again

    # The next save replaces the damaged file.
    new_seq = reopened.graph.save(harness.directory)
    assert harness.checkpoints() == [f"hnsw-{new_seq:020d}.bin"]
    harness.assert_matches_rows(harness.open())


def test_a_damaged_newest_checkpoint_falls_back_to_an_older_one(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    vectors = random_vectors(40, 8, seed=7)
    harness.upsert({f"d{i}": vectors[i] for i in range(20)})
    first = harness.index.save(harness.directory)
    kept = (harness.directory / f"hnsw-{first:020d}.bin").read_bytes()
    deleted = harness.label_of("d1")
    harness.upsert({f"d{i}": vectors[i] for i in range(20, 30)})
    harness.upsert({"d0": vectors[35]})
    harness.delete(["d1", "d25"])
    second = harness.index.save(harness.directory)
    harness.purge_tombstones()
    # A crash between the rename and the clean-up leaves both; then the newer one goes bad.
    (harness.directory / f"hnsw-{first:020d}.bin").write_bytes(kept)
    _damage(harness.directory / f"hnsw-{second:020d}.bin", "truncated")

    spy = GraphSpy(monkeypatch)
    reopened = harness.open()
    assert reopened.graph.saved_seq == first
    assert sorted(spy.upserted) == harness.labels_after(first)
    assert len(spy.upserted) == 10  # d20..d29 but d25 (deleted), and d0 (replaced)
    assert deleted in spy.deleted
    harness.assert_matches_rows(reopened)
    assert reopened.graph.live_count == 30 - 2


# --- growth --------------------------------------------------------------------------------------------


def test_growth_past_the_initial_capacity(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    vectors = random_vectors(3000, 8, seed=9)
    assert int(harness.index._index.get_max_elements()) == 1024
    for start in range(0, 3000, 500):
        harness.upsert({f"d{i}": vectors[i] for i in range(start, start + 500)})
    index = harness.index
    assert index.live_count == harness.collection.exact.count == 3000
    assert int(index._index.get_max_elements()) >= 3000

    label_to_row = {label: int(doc_id[1:]) for label, (doc_id, _, _) in harness.rows().items()}
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
    assert not harness.directory.exists()  # nothing saved yet: no warning, every row replayed
    with caplog.at_level(logging.WARNING):
        rebuilt = harness.open()
    assert not caplog.records
    assert rebuilt.graph.live_count == 3000
    assert rebuilt.graph.saved_seq == -1
    assert int(rebuilt.graph._index.get_max_elements()) >= 3000
    index.save(harness.directory)
    loaded = harness.open()
    assert loaded.graph.live_count == 3000
    assert loaded.graph.saved_seq == 3000
    harness.upsert({f"x{i}": vectors[i] for i in range(50)}, loaded)
    assert loaded.graph.live_count == loaded.exact.count == 3050


# --- deleted slots and replacements --------------------------------------------------------------------


def test_replacing_a_label_while_deleted_slots_exist_does_not_duplicate(harness: Harness) -> None:
    """hnswlib's replace_deleted=True would move an existing label into a free slot and keep the old one live."""
    vectors = random_vectors(40, 8, seed=11)
    harness.upsert({f"d{i}": vectors[i] for i in range(20)})
    harness.delete([f"d{i}" for i in range(10, 15)])  # five free slots
    target_label = harness.label_of("d2")

    harness.upsert({"d2": vectors[30]})  # a replacement on its own
    harness.assert_matches_rows(harness.collection)
    assert harness.index.live_count == 15

    harness.upsert({"d3": vectors[31], "n0": vectors[32], "d4": vectors[33], "n1": vectors[34]})  # mixed batch
    harness.assert_matches_rows(harness.collection)
    assert harness.index.live_count == 17
    assert int(harness.index._index.element_count) == 20, "new labels must reuse the free slots"

    labels, _ = harness.index.search(vectors[30], 100)
    assert labels.count(target_label) == 1
    assert labels[0] == target_label
    assert len(labels) == len(set(labels)) == 17

    # The same through a checkpoint and catch-up.
    harness.index.save(harness.directory)
    harness.delete(["d5", "d6"])
    harness.upsert({"d2": vectors[35], "d7": vectors[36], "n2": vectors[37]})
    harness.purge_tombstones()
    reopened = harness.open()
    harness.assert_matches_rows(reopened)
    assert reopened.graph.live_count == 17 - 2 + 1
    labels, _ = reopened.graph.search(vectors[35], 100)
    assert labels.count(target_label) == 1
    assert labels[0] == target_label
    # And once more on the reopened index, whose free slots came from reconcile_free_slots.
    harness.delete(["d8"], reopened)
    harness.upsert({"d2": vectors[38], "n3": vectors[39]}, reopened)
    harness.assert_matches_rows(reopened)
    assert reopened.graph.live_count == 16


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


def test_below_reuse_slots_from_new_labels_are_appended_and_past_it_they_take_the_deleted_slots(
    harness: Harness,
) -> None:
    """The server's policy (reuse_slots_from = storage.rebuild_deleted_ratio): hnswlib re-links a whole
    neighbourhood to fill a deleted slot, so below the ratio new points are appended and the slots wait for the
    rebuild; at or past it (the rebuild is due) they are reused, which bounds the graph's size."""
    collection = open_collection(
        harness.feed, harness.store.get_collection("c"), harness.index_root, reuse_slots_from=0.2
    )
    assert collection.graph.reuse_slots_from == 0.2
    vectors = random_vectors(200, 8, seed=12)
    harness.upsert({f"d{i}": vectors[i] for i in range(100)}, collection)
    slots = lambda: int(collection.graph._index.element_count)  # noqa: E731
    harness.delete([f"d{i}" for i in range(10)], collection)  # 10 of 100 slots deleted
    harness.upsert({f"n{i}": vectors[100 + i] for i in range(10)}, collection)
    assert slots() == 110, "below the ratio the new labels are appended"
    assert collection.graph.deleted_ratio == pytest.approx(10 / 110)
    harness.assert_matches_rows(collection)

    harness.delete([f"d{i}" for i in range(10, 25)], collection)  # 25 of 110: past the ratio
    harness.upsert({f"m{i}": vectors[120 + i] for i in range(30)}, collection)
    assert slots() == 115, "past the ratio the 25 deleted slots are filled first, then 5 appended"
    assert collection.graph.deleted_ratio == 0
    harness.assert_matches_rows(collection)

    # A reopened collection keeps the policy; its deleted slots come from reconcile_free_slots.
    harness.delete([f"d{i}" for i in range(25, 30)], collection)
    collection.graph.save(harness.directory)
    reopened = open_collection(
        harness.feed, harness.store.get_collection("c"), harness.index_root, reuse_slots_from=0.2
    )
    harness.upsert({f"k{i}": vectors[160 + i] for i in range(5)}, reopened)
    assert int(reopened.graph._index.element_count) == 120
    assert reopened.graph.deleted_ratio == pytest.approx(5 / 120)
    harness.assert_matches_rows(reopened)


def test_below_reuse_slots_from_a_replaced_vector_is_a_new_point_and_the_old_one_is_deleted(harness: Harness) -> None:
    """A replaced vector is appended under the label's next version instead of hnswlib's updatePoint; searches,
    filters, vectors_of and known_labels speak document labels throughout, through a checkpoint and a reopen."""
    collection = open_collection(
        harness.feed, harness.store.get_collection("c"), harness.index_root, reuse_slots_from=0.5
    )
    graph = collection.graph
    vectors = random_vectors(60, 8, seed=13)
    harness.upsert({f"d{i}": vectors[i] for i in range(40)}, collection)
    target = harness.label_of("d3")
    harness.upsert({"d3": vectors[40], "d4": vectors[41], "n0": vectors[42]}, collection)  # two replaced, one new
    assert int(graph._index.element_count) == 43
    assert graph.deleted_ratio == pytest.approx(2 / 43)
    harness.assert_matches_rows(collection)
    assert graph.known_labels() == set(harness.rows())
    labels, _ = graph.search(vectors[40], 5)
    assert labels[0] == target
    assert graph.search(vectors[3], 41)[0].count(target) == 1  # the old point is gone from the answers
    only_target = graph.search(vectors[40], 1, accept=lambda label: label == target)
    assert only_target is not None
    assert only_target[0] == [target]
    found, stored = graph.vectors_of([target, harness.label_of("d5")])
    assert found == [target, harness.label_of("d5")]
    np.testing.assert_allclose(stored[0], vectors[40], rtol=1e-6)

    harness.upsert({"d3": vectors[43]}, collection)  # a second version
    collection.graph.save(harness.directory)
    harness.upsert({"d3": vectors[44]}, collection)  # after the checkpoint: replayed at the reopen
    harness.delete(["d4"], collection)
    reopened = open_collection(
        harness.feed, harness.store.get_collection("c"), harness.index_root, reuse_slots_from=0.5
    )
    harness.assert_matches_rows(reopened)
    assert reopened.graph.known_labels() >= set(harness.rows())
    labels, _ = reopened.graph.search(vectors[44], 3)
    assert labels[0] == target
    assert reopened.graph.live_count == 40
    harness.upsert({"d3": vectors[45]}, reopened)  # and one more on the reopened graph
    harness.assert_matches_rows(reopened)
    assert reopened.graph.search(vectors[45], 1)[0] == [target]

"""Stateful property test of the collection services (Chroma-style): a model of every collection, checked after
each step against real SQLite, real hnswlib, the metadata mirror, the keyword index and the mock embedding
provider, across restarts that load a checkpoint and replay, or rebuild from the rows when the checkpoint is
missing, stale or damaged. Filtered searches, counts and deletes are checked against tests/filter_reference."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from akidb.embedding.providers.mock import mock_vector
from akidb.errors import NotFound
from akidb.storage.collection import OpenCollection
from akidb.storage.db import create_db_engine, migrate
from akidb.storage.index import document_label
from tests.filter_reference import matches
from tests.oracle import brute_distances
from tests.services import Doc, build_services

T = TypeVar("T")
Vector = npt.NDArray[np.float32]

TEXT_MODEL = "all-MiniLM-L6-v2"
TEXT_DIM = 384
ID_POOL = [f"d{i}" for i in range(48)]
TEXT_POOL = [f"note {i} about {word}" for i, word in enumerate(["cats", "rust", "tea", "rain", "jazz", "maps"] * 5)]
MAX_VECTOR_COLLECTIONS = 3
DISTANCE_TOL = 1e-4
MIN_RECALL = 0.8
MIN_MEAN_RECALL = 0.95


@dataclass
class ModelDoc:
    vector: Vector
    text: str | None
    metadata: dict[str, Any]


@dataclass
class ModelCollection:
    name: str
    metric: str
    dimension: int
    model: str | None
    docs: dict[str, ModelDoc] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)  # ids deleted and not written since
    last_written: str | None = None


def seeded_vector(seed: int, dimension: int, scale: float) -> Vector:
    vector = np.random.default_rng(seed).standard_normal(dimension).astype(np.float32) * np.float32(scale)
    return np.asarray(vector, dtype=np.float32)


def vector_strategy(dimension: int) -> st.SearchStrategy[Vector]:
    # Seeds, not raw floats: dense random directions keep HNSW recall meaningful, and small seeds
    # (what shrinking goes for) give exact duplicates, which exercise ties.
    return st.builds(
        seeded_vector,
        st.integers(0, 2**32 - 1),
        st.just(dimension),
        st.sampled_from([1.0, 0.25, 4.0]),
    )


metadata_strategy: st.SearchStrategy[dict[str, Any]] = st.one_of(
    st.just({}),
    st.fixed_dictionaries({"n": st.integers(-5, 5)}),
    st.fixed_dictionaries({"tag": st.sampled_from(["a", "b", "ü"]), "ok": st.booleans()}),
    st.fixed_dictionaries({"n": st.floats(-5, 5), "tags": st.lists(st.sampled_from(["a", "b", "c"]), max_size=3)}),
)
TAGS = st.sampled_from(["a", "b", "ü", "c"])
filter_strategy: st.SearchStrategy[dict[str, Any]] = st.one_of(
    st.builds(lambda n: {"n": {"$gte": n}}, st.integers(-5, 5)),
    st.builds(lambda tag: {"tag": tag}, TAGS),
    st.builds(lambda ok: {"ok": {"$ne": ok}}, st.booleans()),
    st.builds(lambda tag: {"tags": {"$contains": tag}}, TAGS),
    st.builds(lambda present: {"n": {"$exists": present}}, st.booleans()),
    st.builds(lambda tag, n: {"$or": [{"tag": tag}, {"n": {"$lt": n}}]}, TAGS, st.integers(-5, 5)),
    st.builds(lambda tags: {"$not": {"tag": {"$in": tags}}}, st.lists(TAGS, max_size=3)),
)
# Words of TEXT_POOL as a keyword query finds them ("note" and "about" are in every text).
KEYWORDS = ["cats", "rust", "tea", "rain", "jazz", "maps", "note"]


class CollectionMachine(RuleBasedStateMachine):
    """Every search walks the HNSW graph (exact_search_max=0)."""

    collections = Bundle("collections")
    EXACT_SEARCH_MAX = 0

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.data_dir = Path(tempfile.mkdtemp(prefix="akidb-sm-"))
        self.index_root = self.data_dir / "indexes"
        self.model: dict[str, ModelCollection] = {}
        self.recalls: list[float] = []
        self.unreachable_misses = 0
        self.restarts = 0
        self.engine = create_db_engine(f"sqlite:///{self.data_dir / 'akidb.sqlite3'}", synchronous="OFF")
        migrate(self.engine)
        self._build_services()

    # --- plumbing ---------------------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def _build_services(self) -> None:
        self.services = build_services(self.engine, self.index_root, exact_search_max=self.EXACT_SEARCH_MAX)
        self.store = self.services.store
        self.collection_service = self.services.collections
        self.documents = self.services.documents
        self.search_service = self.services.search

    def _open(self, name: str) -> OpenCollection:
        return self.services.open_collections.get(name)

    def _close_services(self) -> None:
        self.services.close()
        self.engine.dispose()

    def teardown(self) -> None:
        try:
            if self.recalls:
                mean = float(np.mean(self.recalls))
                assert mean >= MIN_MEAN_RECALL, f"mean recall {mean:.3f} over {len(self.recalls)} searches"
        finally:
            self._close_services()
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # --- rules ------------------------------------------------------------------------------------------

    @initialize(target=collections, metric=st.sampled_from(["cosine", "l2", "ip"]), dimension=st.integers(4, 16))
    def first_collection(self, metric: str, dimension: int) -> str:
        return self._create_vector_collection(metric, dimension)

    @precondition(lambda self: sum(c.model is None for c in self.model.values()) < MAX_VECTOR_COLLECTIONS)
    @rule(target=collections, metric=st.sampled_from(["cosine", "l2", "ip"]), dimension=st.integers(4, 16))
    def create_vector_collection(self, metric: str, dimension: int) -> str:
        return self._create_vector_collection(metric, dimension)

    def _create_vector_collection(self, metric: str, dimension: int) -> str:
        name = f"vec{len(self.model)}"
        info = self.run(
            self.collection_service.create(name=name, embedding_model=None, dimension=dimension, metric=metric)
        )
        assert (info.embedding_model, info.dimension, info.metric, info.document_count) == (
            None,
            dimension,
            metric,
            0,
        )
        self.model[name] = ModelCollection(name, metric, dimension, None)
        return name

    @precondition(lambda self: "text" not in self.model)
    @rule(target=collections, metric=st.sampled_from(["cosine", "ip"]))
    def create_text_collection(self, metric: str) -> str:
        info = self.run(self.collection_service.create(name="text", metric=metric))  # the default model
        assert (info.embedding_model, info.dimension, info.metric) == (TEXT_MODEL, TEXT_DIM, metric)
        self.model["text"] = ModelCollection("text", metric, TEXT_DIM, TEXT_MODEL)
        return "text"

    @rule(name=collections, data=st.data())
    def upsert(self, name: str, data: st.DataObject) -> None:
        coll = self.model[name]
        # Replacements of live documents are drawn on purpose, so that they meet free (deleted) slots often.
        replaced: list[str] = []
        if coll.docs:
            replaced = data.draw(st.lists(st.sampled_from(sorted(coll.docs)), max_size=8, unique=True), label="replace")
        others = data.draw(
            st.lists(st.sampled_from(ID_POOL), min_size=0 if replaced else 1, max_size=20 - len(replaced), unique=True),
            label="ids",
        )
        ids = list(dict.fromkeys(replaced + others))
        docs: list[Doc] = []
        expected: dict[str, ModelDoc] = {}
        for doc_id in ids:
            metadata = data.draw(metadata_strategy, label=f"{doc_id} metadata")
            if coll.model is not None and data.draw(st.booleans(), label=f"{doc_id} by text"):
                text = data.draw(st.sampled_from(TEXT_POOL), label=f"{doc_id} text")
                docs.append(Doc(doc_id, text, None, metadata))
                expected[doc_id] = ModelDoc(mock_vector(text, TEXT_DIM), text, metadata)
            else:
                vector = data.draw(vector_strategy(coll.dimension), label=f"{doc_id} vector")
                maybe_text = data.draw(st.none() | st.sampled_from(TEXT_POOL), label=f"{doc_id} text")
                docs.append(Doc(doc_id, maybe_text, vector.tolist(), metadata))
                expected[doc_id] = ModelDoc(vector, maybe_text, metadata)
        new = [doc_id for doc_id in ids if doc_id not in coll.docs]

        result = self.run(self.documents.upsert(name, docs))

        assert result.ids == ids
        assert (result.inserted, result.updated) == (len(new), len(ids) - len(new))
        assert result.embeddings_generated == any(doc.vector is None for doc in docs)
        coll.docs.update(expected)
        coll.deleted.difference_update(ids)
        coll.last_written = ids[-1]

    @rule(name=collections, data=st.data())
    def delete(self, name: str, data: st.DataObject) -> None:
        coll = self.model[name]
        existing = sorted(coll.docs)
        chosen: list[str] = []
        if existing:
            chosen = data.draw(st.lists(st.sampled_from(existing), max_size=12, unique=True), label="existing")
        missing = data.draw(
            st.lists(st.sampled_from([*ID_POOL, "nope", "d-never"]), max_size=4, unique=True), label="others"
        )
        ids = list(dict.fromkeys(chosen + missing))
        if not ids:
            ids = ["nope"]
        labels = [self._label(name, doc_id) for doc_id in ids if doc_id in coll.docs]

        removed, seq = self.run(self.documents.delete(name, ids=ids))

        assert removed == len(labels)
        assert seq == self.store.last_seq(self._open(name).id) == self._open(name).applied_seq
        for doc_id in ids:
            if coll.docs.pop(doc_id, None) is not None:
                coll.deleted.add(doc_id)
        if coll.last_written not in coll.docs:
            coll.last_written = None
        raw = self._open(name).graph._index
        gone = set(labels)
        for point in [int(x) for x in raw.get_ids_list() if document_label(int(x)) in gone]:  # every version
            try:
                raw.get_items([point])
            except RuntimeError:
                continue  # hnswlib: "Label not found" for a deleted label
            raise AssertionError(f"{name}: label {document_label(point)} still live in the index after its delete")

    @rule(name=collections, data=st.data(), top_k=st.integers(1, 10))
    def search_by_vector(self, name: str, data: st.DataObject, top_k: int) -> None:
        coll = self.model[name]
        near = bool(coll.docs) and data.draw(st.booleans(), label="near a document")
        if near:
            doc_id = data.draw(st.sampled_from(sorted(coll.docs)), label="near")
            query = coll.docs[doc_id].vector
        else:
            query = data.draw(vector_strategy(coll.dimension), label="query")
        result = self.run(
            self.search_service.search(name, vector=query.tolist(), top_k=top_k, include=("text", "metadata"))
        )
        self._check_search(coll, query, top_k, result.hits)

    @precondition(lambda self: "text" in self.model)
    @rule(text=st.sampled_from(TEXT_POOL), top_k=st.integers(1, 10))
    def search_by_text(self, text: str, top_k: int) -> None:
        coll = self.model["text"]
        result = self.run(self.search_service.search("text", query=text, top_k=top_k))
        assert result.model == TEXT_MODEL
        self._check_search(coll, mock_vector(text, TEXT_DIM), top_k, result.hits)

    @rule(name=collections, where=filter_strategy, top_k=st.integers(1, 10), data=st.data())
    def search_filtered(self, name: str, where: dict[str, Any], top_k: int, data: st.DataObject) -> None:
        coll = self.model[name]
        passing = self._passing(coll, where)
        query = data.draw(vector_strategy(coll.dimension), label="query")
        result = self.run(self.search_service.search(name, vector=query.tolist(), top_k=top_k, filter=where))
        self._check_search(coll, query, top_k, result.hits, among=passing)

    @rule(name=collections, where=filter_strategy, dry_run=st.booleans(), with_ids=st.booleans())
    def delete_by_filter(self, name: str, where: dict[str, Any], dry_run: bool, with_ids: bool) -> None:
        coll = self.model[name]
        ids = [*sorted(coll.docs)[::2], "nope"] if with_ids else None
        doomed = [doc_id for doc_id in self._passing(coll, where) if ids is None or doc_id in ids]
        assert self.run(self.documents.count(name, filter=where)) == len(self._passing(coll, where))

        removed, seq = self.run(self.documents.delete(name, ids=ids, filter=where, dry_run=dry_run))

        assert removed == len(doomed)
        assert seq == self.store.last_seq(self._open(name).id)
        if dry_run:
            return
        for doc_id in doomed:
            del coll.docs[doc_id]
            coll.deleted.add(doc_id)
        if coll.last_written not in coll.docs:
            coll.last_written = None

    @rule(name=collections, word=st.sampled_from(KEYWORDS), top_k=st.integers(1, 20), where=st.none() | filter_strategy)
    def search_keyword(self, name: str, word: str, top_k: int, where: dict[str, Any] | None) -> None:
        coll = self.model[name]
        among = set(self._passing(coll, where)) if where is not None else set(coll.docs)
        having = {doc_id for doc_id in among if coll.docs[doc_id].text and word in coll.docs[doc_id].text.split()}
        result = self.run(self.search_service.search(name, query=word, mode="keyword", top_k=top_k, filter=where))
        ids = [hit.id for hit in result.hits]
        assert len(ids) == len(set(ids)) == min(top_k, len(having)), (ids, sorted(having))
        assert set(ids) <= having, f"{name}: keyword hits without the word {word!r}: {set(ids) - having}"
        assert all(hit.distance is None for hit in result.hits)
        scores = [hit.score for hit in result.hits]
        assert scores == sorted(scores, reverse=True)

    @rule()
    def checkpoint(self) -> None:
        self.services.open_collections.save_all()
        for name in self.model:
            handle = self._open(name)
            files = sorted(p.name for p in handle.index_dir.glob("hnsw-*.bin"))
            last_seq = self.store.last_seq(handle.id)
            assert files == [f"hnsw-{last_seq:020d}.bin"]
            assert not handle.graph.dirty
        # The heartbeat purges every tombstone that each process with a recent heartbeat has applied: all of
        # them, unless a crashed process (crash_and_reopen) still holds some back until its timeout.
        self.services.replica.heartbeat()
        with self.store.engine.connect() as conn:
            held = conn.exec_driver_sql(
                "SELECT count(*) FROM tombstones t WHERE t.seq <= "
                "(SELECT min(p.applied_seq) FROM replica_progress p WHERE p.collection_id = t.collection_id)"
            ).scalar_one()
            processes = conn.exec_driver_sql("SELECT count(DISTINCT replica_id) FROM replica_progress").scalar_one()
            left = conn.exec_driver_sql("SELECT count(*) FROM tombstones").scalar_one()
        assert held == 0
        if processes <= 1:
            assert left == 0

    @rule()
    def crash_and_reopen(self) -> None:
        """A process that dies without a checkpoint: the next one loads the last checkpoint and replays."""
        self.restart(save=False, damage="none")

    @rule(save=st.booleans(), damage=st.sampled_from(["none", "delete", "truncate", "garbage"]))
    def restart(self, save: bool, damage: str) -> None:
        """Rebuild every service from the data directory, as a new process would."""
        if save:
            self.services.open_collections.save_all()
        self._close_services()
        if damage != "none" and self.index_root.is_dir():
            for directory in self.index_root.iterdir():
                if damage == "delete":
                    shutil.rmtree(directory)
                    continue
                for path in directory.glob("hnsw-*.bin"):
                    data = path.read_bytes()
                    if damage == "truncate":
                        path.write_bytes(data[: len(data) // 3])
                    else:
                        path.write_bytes(np.random.default_rng(len(data)).bytes(len(data)))
        self.engine = create_db_engine(f"sqlite:///{self.data_dir / 'akidb.sqlite3'}", synchronous="OFF")
        migrate(self.engine)
        self._build_services()
        self.restarts += 1
        assert sorted(h.name for h in self.run(self.collection_service.list())) == sorted(self.model)

    # --- checks -----------------------------------------------------------------------------------------

    @staticmethod
    def _passing(coll: ModelCollection, where: dict[str, Any]) -> list[str]:
        return [doc_id for doc_id, doc in sorted(coll.docs.items()) if matches(where, doc.metadata)]

    def _check_search(
        self, coll: ModelCollection, query: Vector, top_k: int, hits: list[Any], among: list[str] | None = None
    ) -> None:
        ids = [hit.id for hit in hits]
        live = sorted(coll.docs) if among is None else among
        assert len(ids) == len(set(ids)), f"duplicate ids in {ids}"
        assert set(ids) <= set(live), f"ids not live: {set(ids) - set(live)}"
        assert not set(ids) & coll.deleted, f"deleted ids returned: {set(ids) & coll.deleted}"
        expected_count = min(top_k, len(live))
        assert len(ids) <= expected_count
        if not live:
            return
        distances = [hit.distance for hit in hits]
        assert distances == sorted(distances), f"distances not ascending: {distances}"
        exact = brute_distances(coll.metric, query, np.stack([coll.docs[doc_id].vector for doc_id in live]))
        exact_of = dict(zip(live, exact.tolist(), strict=True))
        for hit in hits:
            want = exact_of[hit.id]
            assert abs(hit.distance - want) <= DISTANCE_TOL * max(1.0, abs(want)), (
                f"{hit.id}: index distance {hit.distance}, brute force {want}"
            )
            assert hit.text == coll.docs[hit.id].text
            assert hit.metadata == coll.docs[hit.id].metadata
        # Recall with ties: a hit counts if it is no farther than the k-th exact distance.
        kth = float(np.sort(exact)[expected_count - 1])
        within = kth + DISTANCE_TOL * max(1.0, abs(kth))
        good = sum(exact_of[doc_id] <= within for doc_id in ids)
        if len(ID_POOL) <= self.EXACT_SEARCH_MAX:
            # Collections this small are scanned exactly: nothing is excused.
            assert good == expected_count, f"exact search missed: {good} of {expected_count}"
        if among is not None:
            # A filter that leaves this few documents is always scanned exactly.
            assert good == expected_count, f"filtered search missed: {good} of {expected_count}"
        if good < expected_count:
            # hnswlib can leave a live node with no incoming edge after updates and slot reuse; no ef finds
            # it. Such a miss says nothing about this search, so it is excused (and counted) -- but only
            # when the node is really unreachable: the index must not find it even when asked for everything.
            missed = [doc_id for doc_id in live if exact_of[doc_id] <= within and doc_id not in ids]
            unreachable = [doc_id for doc_id in missed if not self._reachable(coll, doc_id)]
            self.unreachable_misses += len(unreachable)
            good += min(len(unreachable), expected_count - good)
        recall = good / expected_count
        self.recalls.append(recall)
        assert recall >= MIN_RECALL, f"recall {recall:.2f} for top_k={top_k} over {len(live)} documents"

    def _label(self, name: str, doc_id: str) -> int:
        return self.run(self.documents.get(name, doc_id, include_vector=False)).label

    def _reachable(self, coll: ModelCollection, doc_id: str) -> bool:
        """Can hnswlib's graph reach the document at all? Asked of the raw index with ef = every slot, so that
        the answer does not depend on the code under test."""
        raw = self._open(coll.name).graph._index
        label = self._label(coll.name, doc_id)
        query = np.asarray(coll.docs[doc_id].vector, dtype=np.float32).reshape(1, -1)
        saved_ef = int(raw.ef)
        raw.set_ef(max(int(raw.element_count), 1))
        try:
            for k in range(len(coll.docs), 0, -1):  # hnswlib raises when fewer than k are reachable
                try:
                    labels, _ = raw.knn_query(query, k=k, num_threads=1)
                except RuntimeError:
                    continue
                return label in {document_label(int(x)) for x in labels[0]}
            return False
        finally:
            raw.set_ef(saved_ef)

    @invariant()
    def search_finds_the_latest_write(self) -> None:
        """Read-your-writes through the index: a search with the last written vector, after every step."""
        for name, coll in self.model.items():
            if coll.last_written is None:
                continue
            query = coll.docs[coll.last_written].vector
            top_k = 1 + len(coll.docs) % 10
            result = self.run(self.search_service.search(name, vector=query.tolist(), top_k=top_k))
            self._check_search(coll, query, top_k, result.hits)

    @invariant()
    def counts_and_vectors_match_the_model(self) -> None:
        for name, coll in self.model.items():
            info = self.run(self.collection_service.get(name))
            assert info.document_count == len(coll.docs), f"{name}: {info.document_count} != {len(coll.docs)}"
            handle = self._open(name)
            assert handle.graph.live_count == len(coll.docs), f"{name}: live_count {handle.graph.live_count}"
            assert handle.exact.count == handle.metadata.live_count == len(coll.docs)
            texts = sum(doc.text is not None for doc in coll.docs.values())
            assert handle.keyword.document_count == texts, f"{name}: {handle.keyword.document_count} texts indexed"
            where = {"tag": "a"}
            page = self.run(self.documents.find(name, filter=where, limit=1000))
            assert [doc.id for doc in page.documents] == self._passing(coll, where)
            # A deterministic sample of ids: a few live, a few deleted.
            for doc_id in sorted(coll.docs)[::7][:4]:
                record = self.run(self.documents.get(name, doc_id, include_vector=True))
                want = coll.docs[doc_id]
                assert record.vector is not None
                np.testing.assert_array_equal(record.vector, want.vector)
                assert (record.text, record.metadata) == (want.text, want.metadata)
            for doc_id in sorted(coll.deleted)[:2]:
                try:
                    self.run(self.documents.get(name, doc_id, include_vector=False))
                except NotFound:
                    pass
                else:
                    raise AssertionError(f"{name}: deleted document {doc_id} still readable")

    @invariant()
    def index_holds_exactly_the_live_documents(self) -> None:
        """The index's contents, read from hnswlib itself, so that no graph quirk can hide a wrong index:
        one slot per label, every live document's label live with its latest vector, every other label deleted."""
        for name, coll in self.model.items():
            handle = self._open(name)
            raw = handle.graph._index
            slots = [int(label) for label in raw.get_ids_list()]
            assert len(slots) == len(set(slots)) == int(raw.element_count), (
                f"{name}: {raw.element_count} slots but {len(set(slots))} hnswlib labels (one in two slots?)"
            )
            rows = self.store.list_documents(handle.id, after_id=None, limit=10_000, with_vector=False)
            live = {row.label: row.id for row in rows}
            assert sorted(live.values()) == sorted(coll.docs)
            # Each live document's current point (its label, with a version once a replaced vector was appended).
            current = {handle.graph.hnsw_label(label) for label in live}
            assert current <= set(slots), f"{name}: live points missing from the index: {current - set(slots)}"
            if live:
                labels = sorted(live)
                held = np.asarray(raw.get_items([handle.graph.hnsw_label(label) for label in labels]), np.float64)
                expected = np.stack([coll.docs[live[label]].vector for label in labels]).astype(np.float64)
                if coll.metric == "cosine":  # hnswlib stores cosine vectors normalised
                    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
                np.testing.assert_allclose(held, expected, rtol=1e-5, atol=1e-5)
            for point in set(slots) - current:  # deleted documents, and replaced points of live ones
                try:
                    raw.get_items([point])
                except RuntimeError:
                    continue  # hnswlib: "Label not found" for a label marked deleted
                raise AssertionError(f"{name}: point {point} is neither a document's current one nor deleted")


CollectionMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestCollectionStateMachine = CollectionMachine.TestCase


class ExactCollectionMachine(CollectionMachine):
    """The default threshold: these collections (at most len(ID_POOL) documents) are searched exactly."""

    EXACT_SEARCH_MAX = 5000


ExactCollectionMachine.TestCase.settings = CollectionMachine.TestCase.settings
TestExactCollectionStateMachine = ExactCollectionMachine.TestCase

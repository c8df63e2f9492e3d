"""Open collections: each one's derived structures (HNSW graph, exact vectors, metadata mirror, keyword
index) and the one path that every write takes, so that all of them see writes in `seq` order.

The database is the truth. Opening a collection reads its rows once into the in-memory structures and
loads the graph's checkpoint, replaying what came after it; nothing derived is ever needed to recover.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from akidb.errors import NotFound, collection_not_found
from akidb.storage.exact import ExactVectors
from akidb.storage.index import HnswIndex, open_index, remove_index_files
from akidb.storage.keyword import KeywordIndex
from akidb.storage.metadata import MetadataMirror
from akidb.storage.records import CollectionRecord, DeleteOutcome, NewDocument, UpsertOutcome, blob_to_vector
from akidb.storage.repositories import Store

log = logging.getLogger(__name__)
T = TypeVar("T")


class OpenCollection:
    """An open collection: its fixed shape, its derived structures, and the lock that orders its writes."""

    def __init__(
        self,
        record: CollectionRecord,
        *,
        graph: HnswIndex,
        exact: ExactVectors,
        metadata: MetadataMirror,
        keyword: KeywordIndex,
        index_dir: Path,
    ) -> None:
        self.id = record.id
        self.name = record.name
        self.embedding_model = record.embedding_model
        self.dimension = record.dimension
        self.metric = record.metric
        self.graph = graph
        self.exact = exact
        self.metadata = metadata
        self.keyword = keyword
        self.index_dir = index_dir
        self._write_lock = threading.Lock()
        self.dropped = False

    @property
    def live_count(self) -> int:
        return self.exact.count

    def write(self, commit: Callable[[], T], apply: Callable[[T], None]) -> T:
        """Run `commit` (the database transaction) and `apply` (its effect on the derived structures)
        under the collection's write lock, so that every structure applies writes in commit order."""
        with self._write_lock:
            if self.dropped:
                raise NotFound(f"collection '{self.name}' was deleted")
            outcome = commit()
            apply(outcome)
        return outcome

    def upsert(self, store: Store, documents: Sequence[NewDocument]) -> UpsertOutcome:
        vectors = np.stack([doc.vector for doc in documents])

        def apply(outcome: UpsertOutcome) -> None:
            self.graph.upsert(outcome.labels, vectors, is_new=outcome.is_new, seq=outcome.last_seq)
            self.exact.upsert(outcome.labels, vectors)
            self.metadata.upsert(outcome.labels, [doc.id for doc in documents], [doc.metadata for doc in documents])
            self.keyword.upsert(
                outcome.labels, [doc.text for doc in documents], replaced=[not new for new in outcome.is_new]
            )

        return self.write(lambda: store.upsert_documents(self.id, documents), apply)

    def delete(self, store: Store, choose: Callable[[], Sequence[str]]) -> DeleteOutcome:
        """Delete the documents `choose` names; it runs under the write lock, so that what a filter
        selects is exactly what goes."""

        def apply(outcome: DeleteOutcome) -> None:
            self.graph.delete(outcome.labels, seq=outcome.last_seq)
            self.exact.delete(outcome.labels)
            self.metadata.delete(outcome.labels)
            self.keyword.delete(outcome.labels)

        return self.write(lambda: store.delete_documents(self.id, choose()), apply)

    def save(self, *, only_dirty: bool, store: Store) -> bool:
        """Checkpoint the graph (the one structure worth saving: the rest rebuild from rows in seconds)."""
        with self._write_lock:
            if self.dropped:
                return False
            self.keyword.flush()  # what an import queued, committed now rather than at the next search
            if only_dirty and not self.graph.dirty:
                return False
            seq = self.graph.save(self.index_dir)
            store.purge_tombstones(self.id, seq)
        return True

    def drop(self, store: Store) -> None:
        with self._write_lock:
            store.delete_collection(self.name)
            self.dropped = True
            self.keyword.close()
            remove_index_files(self.index_dir)

    def memory(self) -> dict[str, int]:
        """Bytes held per structure (the graph's figure includes hnswlib's own copy of the vectors)."""
        return {
            "vectors": self.exact.nbytes(),
            **self.graph.nbytes(),
            "metadata": self.metadata.nbytes(),
            "keyword": self.keyword.nbytes(),
        }


def open_collection(store: Store, record: CollectionRecord, index_root: Path) -> OpenCollection:
    """Read every row into the in-memory structures, then open the graph from its checkpoint.

    Call with no concurrent writes to the collection; `record.last_seq` must have been read before the rows.
    """
    exact = ExactVectors(dimension=record.dimension, metric=record.metric)
    metadata = MetadataMirror()
    keyword = KeywordIndex()
    for batch in store.iter_documents(record.id):
        labels = [row.label for row in batch]
        exact.upsert(labels, np.stack([blob_to_vector(row.vector) for row in batch]))
        metadata.upsert(labels, [row.id for row in batch], [row.metadata for row in batch])
        keyword.upsert(labels, [row.text for row in batch], replaced=[False] * len(batch))
    directory = index_root / record.uid
    graph = open_index(
        store,
        record.id,
        directory,
        dimension=record.dimension,
        metric=record.metric,
        params=record.hnsw,
        last_seq=record.last_seq,
    )
    return OpenCollection(record, graph=graph, exact=exact, metadata=metadata, keyword=keyword, index_dir=directory)


class OpenCollections:
    """The registry of open collections, by name."""

    def __init__(self, store: Store, index_root: Path) -> None:
        self.store = store
        self.index_root = index_root
        self._open: dict[str, OpenCollection] = {}
        self._lock = threading.Lock()

    def open_all(self) -> None:
        """Blocking: open every collection, catching up from the database."""
        for record in self.store.list_collections():
            self.open(record)

    def open(self, record: CollectionRecord) -> OpenCollection:
        collection = open_collection(self.store, record, self.index_root)
        with self._lock:
            self._open[record.name] = collection
        return collection

    def get(self, name: str) -> OpenCollection:
        collection = self._open.get(name)
        if collection is None:
            raise collection_not_found(name)
        return collection

    def all(self) -> list[OpenCollection]:
        return list(self._open.values())

    def drop(self, name: str) -> None:
        collection = self.get(name)
        collection.drop(self.store)
        with self._lock:
            if self._open.get(name) is collection:
                del self._open[name]

    def save_all(self, *, only_dirty: bool = True) -> int:
        """Blocking: checkpoint every graph that changed; returns how many were written."""
        return sum(collection.save(only_dirty=only_dirty, store=self.store) for collection in self.all())

    def close(self) -> None:
        for collection in self.all():
            collection.keyword.close()

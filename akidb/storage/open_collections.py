"""Opening collections: each one read once from the database into its in-memory structures, with the graph
loaded from its checkpoint and caught up; and the registry of what is open, by name."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from akidb.errors import collection_not_found
from akidb.storage.changes import ChangeFeed
from akidb.storage.collection import OpenCollection
from akidb.storage.exact import ExactVectors
from akidb.storage.index import HnswIndex
from akidb.storage.keyword import KeywordIndex
from akidb.storage.metadata import MetadataMirror
from akidb.storage.records import CollectionRecord, StoredRow, blob_to_vector
from akidb.storage.repositories import Store

log = logging.getLogger(__name__)


def _fill(collection: OpenCollection, batch: list[StoredRow], *, checkpoint: int, known: set[int]) -> int:
    """Put one batch of rows into the structures; returns how many the graph replayed."""
    labels = [row.label for row in batch]
    vectors = np.stack([blob_to_vector(row.vector) for row in batch])
    collection.exact.upsert(labels, vectors)
    collection.metadata.upsert(labels, [row.id for row in batch], [row.metadata for row in batch])
    collection.keyword.upsert(labels, [row.text for row in batch], replaced=[False] * len(batch))
    # The graph needs only what its checkpoint lacks.
    replay = [i for i, row in enumerate(batch) if row.seq > checkpoint]
    if replay:
        collection.graph.upsert(
            [labels[i] for i in replay],
            vectors[replay],
            is_new=[labels[i] not in known for i in replay],
            seq=checkpoint,
        )
    return len(replay)


def open_collection(
    feed: ChangeFeed, record: CollectionRecord, index_root: Path, *, reuse_slots_from: float = 0.0
) -> OpenCollection:
    """Read every row, in one snapshot, into the in-memory structures; load the graph's newest checkpoint and
    replay the rows written after it, then drop the labels that no row holds any more. The result holds
    exactly the snapshot's `last_seq`; writes after it come through `catch_up`. `reuse_slots_from`: see
    HnswIndex.reuse_slots_from (the server passes storage.rebuild_deleted_ratio)."""
    directory = index_root / record.uid
    with feed.snapshot() as snap:
        head = snap.head(record.id)
        if head is None:
            raise collection_not_found(record.name)
        graph = HnswIndex.load_checkpoint(
            directory, dimension=record.dimension, metric=record.metric, params=record.hnsw
        )
        if graph is None:
            if directory.exists() and any(directory.iterdir()):
                log.warning("rebuilding the index in %s from the database", directory)
            graph = HnswIndex(
                dimension=record.dimension, metric=record.metric, params=record.hnsw, capacity=head.document_count
            )
            checkpoint, known = -1, set[int]()
        else:
            checkpoint, known = graph.applied_seq, graph.known_labels()
        graph.reuse_slots_from = reuse_slots_from
        collection = OpenCollection(
            record,
            feed=feed,
            graph=graph,
            exact=ExactVectors(dimension=record.dimension, metric=record.metric),
            metadata=MetadataMirror(),
            keyword=KeywordIndex(),
            index_dir=directory,
        )
        live: set[int] = set()
        replayed = 0
        for batch in snap.rows(record.id):
            replayed += _fill(collection, batch, checkpoint=checkpoint, known=known)
            live.update(row.label for row in batch)
    gone = sorted(known - live)
    if gone:
        graph.delete(gone, seq=checkpoint)  # deleted after the checkpoint (labels already deleted are skipped)
    graph.reconcile_free_slots(len(live))
    graph.applied_seq = head.last_seq
    if checkpoint >= 0 and (replayed or gone):
        log.info("index %s caught up: %d rows replayed, %d labels dropped", directory.name, replayed, len(gone))
    return collection


class OpenCollections:
    """The registry of open collections, by name. Opening is serialised, and idempotent per collection id."""

    def __init__(self, store: Store, feed: ChangeFeed, index_root: Path, *, reuse_slots_from: float = 0.0) -> None:
        self.store = store
        self.feed = feed
        self.index_root = index_root
        self.reuse_slots_from = reuse_slots_from
        self._open: dict[str, OpenCollection] = {}
        self._lock = threading.Lock()
        self._opening = threading.Lock()

    def open_all(self, progress: Callable[[int, int], None] = lambda done, total: None) -> None:
        """Blocking: open every collection, reporting (opened, total) as it goes."""
        records = self.store.list_collections()
        for done, record in enumerate(records):
            progress(done, len(records))
            self.open(record)
        progress(len(records), len(records))

    def open(self, record: CollectionRecord) -> OpenCollection:
        with self._opening:
            current = self._open.get(record.name)
            if current is not None and current.id == record.id and not current.dropped and not current.stale:
                return current
            collection = open_collection(self.feed, record, self.index_root, reuse_slots_from=self.reuse_slots_from)
            with self._lock:
                self._open[record.name] = collection
        if current is not None:
            # Replaced: another collection of that name (files of another uid), or a stale copy (same files).
            current.close_local(remove_files=current.id != record.id)
        return collection

    def get(self, name: str) -> OpenCollection:
        collection = self._open.get(name)
        if collection is None:
            raise collection_not_found(name)
        return collection

    def find(self, name: str) -> OpenCollection:
        """Blocking: the open collection, or the database's, opened now (created by another process and
        not followed yet). NotFound if neither exists."""
        collection = self._open.get(name)
        if collection is not None:
            return collection
        return self.open(self.store.get_collection(name))

    def all(self) -> list[OpenCollection]:
        return list(self._open.values())

    def drop(self, name: str) -> CollectionRecord:
        """Delete the collection from the database, and here; returns its last record."""
        collection = self.get(name)
        record = collection.drop(self.store)
        self._forget(collection)
        return record

    def drop_local(self, collection: OpenCollection) -> None:
        """The collection is gone from the database (another process deleted it): stop serving it here."""
        collection.close_local(remove_files=True)
        self._forget(collection)

    def _forget(self, collection: OpenCollection) -> None:
        with self._lock:
            if self._open.get(collection.name) is collection:
                del self._open[collection.name]

    def save_all(self, *, only_dirty: bool = True) -> int:
        """Blocking: checkpoint every graph that changed; returns how many were written."""
        return sum(collection.save(only_dirty=only_dirty) for collection in self.all())

    def close(self) -> None:
        for collection in self.all():
            collection.keyword.close()

"""Open collections: each one's derived structures (HNSW graph, exact vectors, metadata mirror, keyword
index) and the one path that every write takes, so that all of them see writes in `seq` order.

The database is the truth. Opening a collection reads its rows once, in one snapshot, into the in-memory
structures and loads the graph's checkpoint, replaying what came after it. From then on the collection
follows the database: writes by this process are applied as they commit, and everything another process
wrote before them is applied first (`catch_up`), so the structures always hold the database's state at some seq.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from akidb.errors import NotFound
from akidb.storage.changes import ChangeFeed
from akidb.storage.exact import ExactVectors
from akidb.storage.index import HnswIndex, remove_index_files
from akidb.storage.keyword import KeywordIndex
from akidb.storage.metadata import MetadataMirror
from akidb.storage.records import (
    Changes,
    CollectionRecord,
    DeleteOutcome,
    NewDocument,
    UpsertOutcome,
    Vector,
    blob_to_vector,
)
from akidb.storage.repositories import Store

log = logging.getLogger(__name__)
T = TypeVar("T")


class Stale(Exception):
    """Tombstones this process had not applied are purged (it was silent for longer than the replica
    timeout): the collection must be reopened from its rows."""


class OpenCollection:
    """An open collection: its fixed shape, its derived structures, and the lock that orders its writes."""

    def __init__(
        self,
        record: CollectionRecord,
        *,
        feed: ChangeFeed,
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
        self.feed = feed
        self.graph = graph
        self.exact = exact
        self.metadata = metadata
        self.keyword = keyword
        self.index_dir = index_dir
        self._write_lock = threading.Lock()
        self.dropped = False
        # Set when a catch-up found its tombstones purged: the follower reopens the collection.
        self.stale = False

    @property
    def live_count(self) -> int:
        return self.exact.count

    @property
    def applied_seq(self) -> int:
        """Every write to this collection up to this seq is reflected here."""
        return self.graph.applied_seq

    # --- applying writes, ours and others' ---------------------------------------------------------

    def _apply_rows(
        self,
        labels: list[int],
        ids: list[str],
        texts: list[str | None],
        metadatas: list[dict[str, object]],
        vectors: Vector,
        seq: int,
    ) -> None:
        # Whether a label is new is judged by what this process holds, not by the database: a row that
        # another process inserted and this one has not applied is new here.
        present = self.exact.contains(labels)
        # The mirror first: searches hydrate their hits from it, so every label the graph or the exact
        # scan can return is already there (deletes go the other way round: the mirror last).
        self.metadata.upsert(labels, ids, metadatas)
        changed = self.exact.changed(labels, vectors)
        self.exact.upsert(labels, vectors)
        # A replaced document whose vector is unchanged (a text or metadata edit, a repeated import) keeps
        # its graph node: hnswlib's in-place update relinks the neighbourhood, ~6x the cost of an insert.
        moved = [i for i, (p, c) in enumerate(zip(present, changed, strict=True)) if c or not p]
        if len(moved) == len(labels):
            self.graph.upsert(labels, vectors, is_new=[not p for p in present], seq=seq)
        else:
            self.graph.upsert(
                [labels[i] for i in moved], vectors[moved], is_new=[not present[i] for i in moved], seq=seq
            )
        self.keyword.upsert(labels, texts, replaced=present)

    def _apply_deletes(self, labels: list[int], seq: int) -> None:
        self.graph.delete(labels, seq=seq)
        self.exact.delete(labels)
        self.metadata.delete(labels)
        self.keyword.delete(labels)

    def _apply_changes(self, changes: Changes, after: int) -> None:
        """One batch of changes after seq `after`. applied_seq moves only with the last batch: rows come as
        they stand now, so the state at an earlier batch's end is never held on its own."""
        if changes.purged_seq > after:
            self.stale = True
            raise Stale(f"collection '{self.name}': tombstones after seq {after} were purged")
        seq = self.applied_seq if changes.more else changes.until
        # Tombstones first: their labels are never reused, so they cannot hit a row of this batch.
        if changes.tombstones:
            self._apply_deletes(changes.tombstones, seq)
        if changes.rows:
            rows = changes.rows
            self._apply_rows(
                [row.label for row in rows],
                [row.id for row in rows],
                [row.text for row in rows],
                [row.metadata for row in rows],
                np.stack([blob_to_vector(row.vector) for row in rows]),
                seq,
            )
        self.graph.advance(seq)

    def _catch_up_locked(self) -> int:
        """Under the write lock: apply everything committed so far, in batches; returns how many rows and
        deletions. Raises Stale when the collection must be reopened instead."""
        applied, cursor, more = 0, self.applied_seq, True
        while more:
            changes = self.feed.changes(self.id, cursor)
            if changes is None:  # deleted by another process: the follower drops it
                break
            self._apply_changes(changes, cursor)
            applied += len(changes.rows) + len(changes.tombstones)
            cursor, more = changes.until, changes.more
        return applied

    def catch_up(self) -> int:
        """Blocking: apply what other processes wrote; returns how many rows and deletions were applied.
        Raises Stale when the collection must be reopened instead."""
        with self._write_lock:
            if self.dropped or self.stale:
                return 0
            return self._catch_up_locked()

    def write(self, commit: Callable[[], T], apply: Callable[[T], None]) -> T:
        """Run `commit` (the database transaction) and `apply` (its effect on the derived structures)
        under the collection's write lock, so that every structure applies writes in commit order."""
        with self._write_lock:
            if self.dropped:
                raise NotFound(f"collection '{self.name}' was deleted")
            outcome = commit()
            apply(outcome)
        return outcome

    def _before_write(self, base_seq: int) -> None:
        """Under the write lock and the collection row's lock, before a write of ours: apply what others
        committed first. If that is impossible (the collection is stale), the write still goes; this copy
        skips it, and the reopen brings it."""
        if self.applied_seq >= base_seq or self.stale:
            return
        try:
            self._catch_up_locked()
        except Stale:
            log.warning("collection '%s' is stale; it will be reopened from the database", self.name)

    def upsert(self, store: Store, documents: Sequence[NewDocument]) -> UpsertOutcome:
        vectors = np.stack([doc.vector for doc in documents])

        def apply(outcome: UpsertOutcome) -> None:
            if self.applied_seq != outcome.base_seq:
                return  # stale: see _before_write
            self._apply_rows(
                outcome.labels,
                [doc.id for doc in documents],
                [doc.text for doc in documents],
                [doc.metadata for doc in documents],
                vectors,
                outcome.last_seq,
            )

        return self.write(lambda: store.upsert_documents(self.id, documents, before=self._before_write), apply)

    def delete(self, store: Store, choose: Callable[[], Sequence[str]]) -> DeleteOutcome:
        """Delete the documents `choose` names. It runs under the write lock and the collection row's lock,
        once this process has applied every earlier write (others' included), so that what a filter
        selects is exactly what goes."""

        def choose_when_caught_up(base_seq: int) -> Sequence[str]:
            self._before_write(base_seq)
            return choose()

        def apply(outcome: DeleteOutcome) -> None:
            if self.applied_seq != outcome.base_seq:
                return  # stale: see _before_write
            if outcome.labels:
                self._apply_deletes(outcome.labels, outcome.last_seq)

        return self.write(lambda: store.delete_documents(self.id, choose_when_caught_up), apply)

    def set_ef_search(self, ef_search: int) -> None:
        if self.graph.params.ef_search == ef_search:
            return  # the usual case, checked without waiting for a write in progress
        with self._write_lock:
            if self.graph.params.ef_search != ef_search:
                self.graph.set_ef_search(ef_search)

    def run_caught_up(self, seq: int, action: Callable[[], T]) -> T | None:
        """Run `action` under the write lock once this copy has applied at least `seq` (catching up with the
        database first if need be): the graph rebuild's swap. None, without running it, if the collection was
        dropped or is stale, or cannot reach `seq`."""
        with self._write_lock:
            if self.dropped or self.stale:
                return None
            if self.applied_seq < seq:
                try:
                    self._catch_up_locked()
                except Stale:
                    return None
            return action() if self.applied_seq >= seq else None

    def save(self, *, only_dirty: bool) -> bool:
        """Checkpoint the graph (the one structure worth saving: the rest rebuild from rows in seconds)."""
        with self._write_lock:
            if self.dropped:
                return False
            self.keyword.flush()  # what an import queued, committed now rather than at the next search
            if only_dirty and not self.graph.dirty:
                return False
            self.graph.save(self.index_dir)
        return True

    def drop(self, store: Store) -> CollectionRecord:
        with self._write_lock:
            record = store.delete_collection(self.name)
            self._close(remove_files=True)
        return record

    def close_local(self, *, remove_files: bool) -> None:
        """Stop serving this copy: the collection was deleted elsewhere, or a fresh copy replaces it."""
        with self._write_lock:
            self._close(remove_files=remove_files)

    def _close(self, *, remove_files: bool) -> None:
        if self.dropped:
            return
        self.dropped = True
        self.keyword.close()
        if remove_files:
            remove_index_files(self.index_dir)

    def memory(self) -> dict[str, int]:
        """Bytes held per structure (the graph's figure includes hnswlib's own copy of the vectors)."""
        return {
            "vectors": self.exact.nbytes(),
            **self.graph.nbytes(),
            "metadata": self.metadata.nbytes(),
            "keyword": self.keyword.nbytes(),
        }

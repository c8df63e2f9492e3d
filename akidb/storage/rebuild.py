"""Rebuild a collection's HNSW graph in the background and swap it in while searches go on.

hnswlib never frees a deleted point: it stays in the graph and searches walk through it, and heavy churn can
leave live points that no link reaches. A rebuild makes a fresh graph of the live rows only, in three steps:

1. build from the rows of one database snapshot (seq S), holding no lock: searches and writes go on;
2. apply what was committed after S to the new graph, still holding no lock;
3. under the collection's write lock (writes wait, searches do not), apply what was written meanwhile, so
   that the new graph holds exactly the collection's state at its applied_seq, and swap it in.

The database is the truth, but it shows each row only in its newest version. Where a row changed after the
collection's applied_seq (another process wrote it and this one has not applied that yet), the state at
applied_seq comes from this process's own structures: the exact mirror says which labels are live, the old
graph holds their vectors. Deletions are found by comparing with the exact mirror too, since tombstones may be
purged while a rebuild runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from akidb import observability
from akidb.storage.changes import ChangeFeed
from akidb.storage.collection import OpenCollection
from akidb.storage.index import HnswIndex
from akidb.storage.records import StoredRow, blob_to_vector

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]
# Rounds of applying what was committed during the build without a lock, while each brings this many writes.
_UNLOCKED_ROUNDS = 3
_UNLOCKED_ROUNDS_THRESHOLD = 1000


@dataclass(frozen=True, slots=True)
class RebuildReport:
    collection: str
    reason: str
    swapped: bool
    seconds: float
    live: int  # points in the new graph
    replayed: int  # rows and deletions applied on top of the snapshot


class _Draft:
    """The graph being built, and the labels live in it (hnswlib does not say which slots are deleted)."""

    def __init__(self, graph: HnswIndex, live: set[int]) -> None:
        self.graph = graph
        self.live = live

    def upsert(self, labels: Sequence[int], vectors: Vectors) -> None:
        if labels:
            self.graph.upsert(list(labels), vectors, is_new=[label not in self.live for label in labels], seq=0)
            self.live.update(labels)

    def upsert_rows(self, rows: Sequence[StoredRow]) -> None:
        if rows:
            self.upsert([row.label for row in rows], np.stack([blob_to_vector(row.vector) for row in rows]))

    def delete(self, labels: Sequence[int]) -> None:
        gone = [label for label in labels if label in self.live]
        if gone:
            self.graph.delete(gone, seq=0)
            self.live.difference_update(gone)


def _read_snapshot(feed: ChangeFeed, collection: OpenCollection) -> tuple[int, npt.NDArray[np.uint64], Vectors] | None:
    """Every live row of one database snapshot: (its seq, labels, vectors); None if the collection is gone."""
    labels: list[int] = []
    parts: list[Vectors] = []
    with feed.snapshot() as snap:
        head = snap.head(collection.id)
        if head is None:
            return None
        for batch in snap.rows(collection.id):
            labels.extend(row.label for row in batch)
            parts.append(np.stack([blob_to_vector(row.vector) for row in batch]))
    vectors = np.concatenate(parts) if parts else np.empty((0, collection.dimension), np.float32)
    return head.last_seq, np.asarray(labels, dtype=np.uint64), vectors


def _apply_committed(feed: ChangeFeed, collection: OpenCollection, draft: _Draft, after: int) -> tuple[int, int] | None:
    """Without a lock: every write committed after `after`, into the draft. Returns (the seq it now holds, how
    many rows and deletions), or None if the collection is gone. Tombstones purged meanwhile are made up for
    under the lock (see _finish)."""
    cursor, more, applied = after, True, 0
    while more:
        changes = feed.changes(collection.id, cursor)
        if changes is None:
            return None
        draft.delete(changes.tombstones)
        draft.upsert_rows(changes.rows)
        applied += len(changes.tombstones) + len(changes.rows)
        cursor, more = changes.until, changes.more
    return cursor, applied


def _finish(feed: ChangeFeed, collection: OpenCollection, draft: _Draft, after: int) -> int | None:
    """Under the collection's write lock: bring the draft from seq `after` to the collection's state at its
    applied_seq. Returns how many labels changed, or None if the collection is gone."""
    applied_seq = collection.applied_seq
    # Labels whose newest row is past applied_seq: their state there is this process's own.
    undecided: set[int] = set()
    cursor, more, changed = after, True, 0
    while more:
        changes = feed.changes(collection.id, cursor)
        if changes is None:
            return None
        known = [row for row in changes.rows if row.seq <= applied_seq]
        draft.upsert_rows(known)
        undecided.update(row.label for row in changes.rows if row.seq > applied_seq)
        changed += len(changes.rows)
        cursor, more = changes.until, changes.more
    if cursor > applied_seq:
        # Also rows written after `after` and deleted after applied_seq: the old graph still has them.
        undecided.update(collection.graph.known_labels() - draft.live)
    if undecided:
        candidates = sorted(undecided)
        alive = collection.exact.contains(candidates)
        live = [label for label, ok in zip(candidates, alive, strict=True) if ok]
        draft.delete([label for label, ok in zip(candidates, alive, strict=True) if not ok])
        found, vectors = collection.graph.vectors_of(live)
        draft.upsert(found, vectors)
    in_draft = sorted(draft.live)
    dead = [label for label, ok in zip(in_draft, collection.exact.contains(in_draft), strict=True) if not ok]
    draft.delete(dead)
    return changed + len(dead)


def rebuild_graph(
    collection: OpenCollection,
    *,
    reason: str,
    should_stop: Callable[[], bool] = lambda: False,
    threads: int = -1,
    before_swap: Callable[[], None] = lambda: None,
) -> RebuildReport:
    """Blocking: build a fresh graph of the collection's live rows and swap it in, then checkpoint it.

    `should_stop` is asked between batches (a shutting-down server). `before_swap` runs after the unlocked
    steps, just before the write lock is taken: tests write there to land writes during a rebuild."""
    started = time.perf_counter()
    feed = collection.feed
    observability.INDEX_REBUILD_IN_PROGRESS.labels(collection.name).set(1)
    try:
        swapped, live, replayed = _rebuild(collection, feed, should_stop, threads, before_swap)
    finally:
        observability.INDEX_REBUILD_IN_PROGRESS.labels(collection.name).set(0)
    seconds = time.perf_counter() - started
    if swapped:
        collection.save(only_dirty=True)  # so that a restart loads the new graph, not the old one and a replay
        observability.INDEX_REBUILDS.labels(collection.name, reason).inc()
        observability.INDEX_REBUILD_DURATION.observe(seconds)
        log.info(
            "collection '%s': graph rebuilt (%s) in %.1f s: %d points, %d writes applied during the rebuild",
            collection.name,
            reason,
            seconds,
            live,
            replayed,
        )
    return RebuildReport(collection.name, reason, swapped, seconds, live, replayed)


def _rebuild(
    collection: OpenCollection,
    feed: ChangeFeed,
    should_stop: Callable[[], bool],
    threads: int,
    before_swap: Callable[[], None],
) -> tuple[bool, int, int]:
    snapshot = _read_snapshot(feed, collection)
    if snapshot is None:
        return False, 0, 0
    seq, labels, vectors = snapshot
    old = collection.graph
    graph = HnswIndex.built_from(
        labels,
        vectors,
        dimension=collection.dimension,
        metric=collection.metric,
        params=old.params,
        seq=seq,
        should_stop=should_stop,
        threads=threads,
    )
    del vectors
    if graph is None:
        return False, 0, 0
    draft = _Draft(graph, {int(label) for label in labels})
    replayed, latest = 0, _UNLOCKED_ROUNDS_THRESHOLD
    for _ in range(_UNLOCKED_ROUNDS):
        # Again while a round brought many writes (an import during the build): what is left for the write
        # lock, where writes wait, stays small.
        if latest < _UNLOCKED_ROUNDS_THRESHOLD:
            break
        committed = _apply_committed(feed, collection, draft, seq)
        if committed is None or should_stop():
            return False, 0, 0
        seq, latest = committed
        replayed += latest
    before_swap()

    def finish_and_swap() -> int | None:
        changed = _finish(feed, collection, draft, seq)
        if changed is None:
            return None
        if len(draft.live) != collection.live_count:
            log.warning(
                "collection '%s': rebuilt graph holds %d points, the collection %d; keeping the old graph",
                collection.name,
                len(draft.live),
                collection.live_count,
            )
            return None
        collection.graph.adopt(draft.graph)
        return changed

    changed = collection.run_caught_up(seq, finish_and_swap)
    if changed is None:
        return False, 0, 0
    return True, len(draft.live), replayed + changed

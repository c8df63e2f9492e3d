"""Per-collection hnswlib index: growth by resize, deletes by mark_deleted, atomic seq-stamped checkpoints.

The database is the truth. A checkpoint file is named after the highest `seq` it contains, so opening
an index means: load the newest readable checkpoint, then replay the rows and tombstones written after it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
from pathlib import Path

import hnswlib
import numpy as np
import numpy.typing as npt

from akidb.storage.repositories import HnswParams, Store, blob_to_vector
from akidb.storage.rwlock import RWLock

log = logging.getLogger(__name__)

_CHECKPOINT_RE = re.compile(r"^hnsw-(\d{20})\.bin$")
_MIN_CAPACITY = 1024
# Up to this many live vectors a collection is searched exactly (like Qdrant's full-scan threshold): an HNSW
# graph can leave a point with no inbound edge, and users of a small collection rightly expect exact answers.
DEFAULT_EXACT_MAX = 5000


def _checkpoint_name(seq: int) -> str:
    return f"hnsw-{seq:020d}.bin"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Rows added to the graph per hold of the write lock (see HnswIndex.upsert).
GRAPH_WRITE_SLICE = 32


class HnswIndex:
    """Thread-safe wrapper. Searches share a read lock; adds, deletes, resizes and saves take the write lock."""

    def __init__(
        self,
        *,
        dimension: int,
        metric: str,
        params: HnswParams,
        capacity: int = _MIN_CAPACITY,
        loaded: tuple[hnswlib.Index, int] | None = None,
        exact_max: int = DEFAULT_EXACT_MAX,
    ) -> None:
        """A new empty index, or one wrapping `loaded`: an hnswlib index read from the checkpoint of that seq."""
        self.dimension = dimension
        self.metric = metric
        self.params = params
        if loaded is None:
            raw = hnswlib.Index(space=metric, dim=dimension)
            raw.init_index(
                max_elements=max(capacity, _MIN_CAPACITY),
                ef_construction=params.ef_construction,
                M=params.m,
                allow_replace_deleted=True,
            )
            self.applied_seq, self.saved_seq = 0, -1
        else:
            raw, seq = loaded
            self.applied_seq = self.saved_seq = seq
        raw.set_ef(params.ef_search)
        self._index = raw
        self._lock = RWLock()
        # Marked-deleted slots not yet reused by a new label (hnswlib does not report this itself).
        self._free_slots = 0
        self.exact_max = exact_max
        # label -> vector (unit length for cosine) while the collection is small; None once it outgrew exact_max.
        self._exact: dict[int, npt.NDArray[np.float32]] | None = {} if loaded is None else None
        self._exact_matrix: tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]] | None = None

    # --- reads ---

    @property
    def live_count(self) -> int:
        return int(self._index.element_count) - self._free_slots

    @property
    def exact(self) -> bool:
        """Whether searches scan every vector (small collections) rather than walk the HNSW graph."""
        return self._exact is not None

    @property
    def dirty(self) -> bool:
        return self.applied_seq != self.saved_seq

    def search(self, vector: npt.NDArray[np.float32], k: int, ef: int | None = None) -> tuple[list[int], list[float]]:
        """Up to k nearest labels and their distances, best first."""
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        wanted = max(ef or self.params.ef_search, k)
        with self._lock.read():
            if self._exact is not None:
                return self._exact_knn(query[0], k)
            if wanted == self._index.ef:
                found = self._knn(query, k)
                if found is not None:
                    return found
        # Another ef, or fewer than k results reachable at this one: ef is index state, so search alone.
        with self._lock.write():
            try:
                return self._knn_widening(query, k, wanted)
            finally:
                self._index.set_ef(self.params.ef_search)

    def _exact_knn(self, query: npt.NDArray[np.float32], k: int) -> tuple[list[int], list[float]]:
        cached = self._exact_matrix
        if cached is None:  # rebuilt after a write; concurrent readers may both build it, harmlessly
            exact = self._exact or {}
            labels = np.fromiter(exact.keys(), dtype=np.int64, count=len(exact))
            matrix = np.stack(list(exact.values())) if exact else np.empty((0, self.dimension), np.float32)
            cached = self._exact_matrix = (labels, matrix)
        labels, matrix = cached
        k = min(k, len(labels))
        if k <= 0:
            return [], []
        if self.metric == "l2":
            distances = ((matrix - query) ** 2).sum(axis=1)
        else:
            if self.metric == "cosine":
                query = query / max(float(np.linalg.norm(query)), 1e-30)
            distances = 1.0 - matrix @ query
        top = np.argpartition(distances, k - 1)[:k] if k < len(labels) else np.arange(len(labels))
        top = top[np.argsort(distances[top], kind="stable")]
        return [int(x) for x in labels[top]], [float(x) for x in distances[top]]

    def _knn(self, query: npt.NDArray[np.float32], k: int) -> tuple[list[int], list[float]] | None:
        k = min(k, self.live_count)
        if k <= 0:
            return [], []
        try:
            labels, distances = self._index.knn_query(query, k=k, num_threads=1)
        except RuntimeError:  # hnswlib: fewer than k results reachable at the current ef
            return None
        return [int(x) for x in labels[0]], [float(x) for x in distances[0]]

    def _knn_widening(self, query: npt.NDArray[np.float32], k: int, ef: int) -> tuple[list[int], list[float]]:
        """Deleted nodes can leave fewer than k reachable results: widen ef up to the element count, then lower k."""
        k = min(k, self.live_count)
        self._index.set_ef(ef)
        total = int(self._index.element_count)
        while k > 0:
            found = self._knn(query, k)
            if found is not None:
                return found
            if self._index.ef < total:
                self._index.set_ef(min(total, self._index.ef * 4))
            else:
                k -= 1
        return [], []

    # --- writes ---

    def upsert(self, labels: list[int], vectors: npt.NDArray[np.float32], *, is_new: list[bool], seq: int) -> None:
        """Add new labels and replace existing ones.

        Only new labels may reuse deleted slots: hnswlib's replace_deleted would move an existing label
        into a vacant slot and leave its old slot live, so replacements update in place instead.
        """
        data = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(labels), self.dimension)
        new_rows = [row for row, new in enumerate(is_new) if new]
        old_rows = [row for row, new in enumerate(is_new) if not new]
        # The caller holds the collection's write lock, so no other write interleaves with these steps.
        with self._lock.write():
            needed = int(self._index.element_count) + max(0, len(new_rows) - self._free_slots)
            capacity = int(self._index.get_max_elements())
            if needed > capacity:
                self._index.resize_index(max(needed, capacity * 2))
        # The graph work goes in slices, each under the lock on its own, so that searches run between
        # them: replacing existing vectors is slow in hnswlib, and 100 replacements held searches for
        # 300-500 ms as one step.
        for rows, replace_deleted in ((old_rows, False), (new_rows, True)):
            for start in range(0, len(rows), GRAPH_WRITE_SLICE):
                part = rows[start : start + GRAPH_WRITE_SLICE]
                with self._lock.write():
                    self._index.add_items(
                        data[part],
                        np.asarray([labels[r] for r in part], dtype=np.uint64),
                        num_threads=-1,
                        replace_deleted=replace_deleted,
                    )
                    if replace_deleted:
                        self._free_slots -= min(self._free_slots, len(part))
        with self._lock.write():
            if self._exact is not None:
                self._remember_exact(labels, data)
            self.applied_seq = max(self.applied_seq, seq)

    def _remember_exact(self, labels: list[int], data: npt.NDArray[np.float32]) -> None:
        assert self._exact is not None
        if self.metric == "cosine":
            data = data / np.maximum(np.linalg.norm(data, axis=1, keepdims=True), 1e-30)
        for label, vector in zip(labels, data, strict=True):
            self._exact[label] = vector.copy()
        self._exact_matrix = None
        if len(self._exact) > self.exact_max:
            self._exact = None  # from now on the graph serves; the next open decides again

    def start_exact(self, labels: list[int], vectors: npt.NDArray[np.float32]) -> None:
        """Mirror the collection's live vectors for exact search (called when it is small on open)."""
        with self._lock.write():
            self._exact = {}
            self._remember_exact(labels, np.asarray(vectors, dtype=np.float32).reshape(len(labels), self.dimension))

    def known_labels(self) -> set[int]:
        """Labels with a slot in the index, deleted ones included."""
        with self._lock.read():
            return {int(x) for x in self._index.get_ids_list()}

    def delete(self, labels: list[int], *, seq: int) -> None:
        with self._lock.write():
            for label in labels:
                try:
                    self._index.mark_deleted(label)
                    self._free_slots += 1
                except RuntimeError:
                    pass  # not in the index (replayed twice, or never added): nothing to remove
                if self._exact is not None and self._exact.pop(label, None) is not None:
                    self._exact_matrix = None
            self.applied_seq = max(self.applied_seq, seq)

    def set_ef_search(self, ef_search: int) -> None:
        with self._lock.write():
            self.params = HnswParams(self.params.m, self.params.ef_construction, ef_search)
            self._index.set_ef(ef_search)

    # --- persistence ---

    def save(self, directory: Path) -> int:
        """Write a checkpoint atomically (temp file, fsync, rename, fsync dir); returns its seq."""
        directory.mkdir(parents=True, exist_ok=True)
        with self._lock.read():
            seq = self.applied_seq
            tmp = directory / f".hnsw-{seq}-{threading.get_ident()}.tmp"
            self._index.save_index(str(tmp))
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, directory / _checkpoint_name(seq))
        _fsync_dir(directory)
        for old in directory.iterdir():
            match = _CHECKPOINT_RE.match(old.name)
            if match and int(match.group(1)) < seq:
                old.unlink(missing_ok=True)
        self.saved_seq = seq
        return seq

    @classmethod
    def load_checkpoint(
        cls, directory: Path, *, dimension: int, metric: str, params: HnswParams, exact_max: int = DEFAULT_EXACT_MAX
    ) -> HnswIndex | None:
        """The newest readable checkpoint, or None."""
        if not directory.is_dir():
            return None
        checkpoints = sorted(
            (int(m.group(1)), directory / name) for name in os.listdir(directory) if (m := _CHECKPOINT_RE.match(name))
        )
        for seq, path in reversed(checkpoints):
            try:
                raw = hnswlib.Index(space=metric, dim=dimension)
                raw.load_index(str(path), max_elements=0, allow_replace_deleted=True)
            except Exception as exc:  # hnswlib raises RuntimeError or worse on damaged files
                log.warning("index checkpoint %s is unreadable (%s); trying an older one", path, exc)
                continue
            return cls(dimension=dimension, metric=metric, params=params, loaded=(raw, seq), exact_max=exact_max)
        return None

    def reconcile_free_slots(self, live_count: int) -> None:
        """After catch-up the index holds exactly the database's rows; the rest are deleted slots."""
        self._free_slots = max(0, int(self._index.element_count) - live_count)


def open_index(
    store: Store,
    collection_id: int,
    directory: Path,
    *,
    dimension: int,
    metric: str,
    params: HnswParams,
    last_seq: int,
    exact_max: int = DEFAULT_EXACT_MAX,
) -> HnswIndex:
    """Load the newest checkpoint and replay what came after it; rebuild from the rows if there is none.

    Call with no concurrent writes to the collection, and with `last_seq` read before the rows.
    """
    live_count = store.count_documents(collection_id)
    index = HnswIndex.load_checkpoint(directory, dimension=dimension, metric=metric, params=params, exact_max=exact_max)
    if index is None:
        if directory.exists() and any(directory.iterdir()):
            log.warning("rebuilding the index in %s from the database", directory)
        # A rebuild replays every row, which also fills the exact-search mirror of a small collection.
        index = HnswIndex(dimension=dimension, metric=metric, params=params, capacity=live_count, exact_max=exact_max)
        checkpoint = -1
    else:
        checkpoint = index.applied_seq
    known = index.known_labels() if checkpoint >= 0 else set()
    replayed = 0
    for labels, blobs in store.vectors_since(collection_id, checkpoint):
        vectors = np.stack([blob_to_vector(b) for b in blobs])
        index.upsert(labels, vectors, is_new=[label not in known for label in labels], seq=checkpoint)
        replayed += len(labels)
    tombstones = store.tombstones_since(collection_id, checkpoint) if checkpoint >= 0 else []
    if tombstones:
        index.delete(tombstones, seq=checkpoint)
    index.reconcile_free_slots(live_count)
    if checkpoint >= 0 and live_count <= exact_max:
        labels, blobs = store.all_vectors(collection_id)
        vectors = np.stack([blob_to_vector(b) for b in blobs]) if blobs else np.empty((0, dimension), np.float32)
        index.start_exact(labels, vectors)
    index.applied_seq = max(last_seq, checkpoint)
    if replayed or tombstones:
        log.info("index %s caught up: %d rows replayed, %d deletions", directory.name, replayed, len(tombstones))
    return index


def remove_index_files(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)

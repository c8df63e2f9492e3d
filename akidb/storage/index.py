"""Per-collection hnswlib index: growth by resize, deletes by mark_deleted, atomic seq-stamped checkpoints.

The database is the truth. A checkpoint file is named after the highest `seq` it contains, so opening
an index means: load the newest readable checkpoint, replay the rows written after it and drop the labels
that no row holds any more (see storage/open_collections.py).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import hnswlib
import numpy as np
import numpy.typing as npt

from akidb.storage.records import HnswParams
from akidb.storage.rwlock import RWLock

log = logging.getLogger(__name__)

_CHECKPOINT_RE = re.compile(r"^hnsw-(\d{20})\.bin$")
_MIN_CAPACITY = 1024


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
# A document's hnswlib label: its label, plus a version above these bits once its vector was replaced by
# appending a point (see HnswIndex.upsert). Labels are handed out in order and stay far below 2**40.
_LABEL_BITS = 40
_LABEL_MASK = (1 << _LABEL_BITS) - 1
_MAX_VERSION = (1 << (64 - _LABEL_BITS)) - 1


def document_label(hnsw_label: int) -> int:
    """The document label of one of the graph's points, whatever its version."""
    return hnsw_label & _LABEL_MASK


def _versions_in(raw: hnswlib.Index) -> dict[int, int]:
    """label -> newest version among the slots of a loaded graph (older versions are deleted slots)."""
    slots = np.asarray(raw.get_ids_list(), dtype=np.uint64)
    versioned = np.sort(slots[slots > _LABEL_MASK])  # ascending: the newest version of a label is kept last
    return {int(slot) & _LABEL_MASK: int(slot) >> _LABEL_BITS for slot in versioned.tolist()}


# Rows per add_items call of a background rebuild: between calls it looks whether it should stop.
_BUILD_BATCH = 2048


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
        # label -> version, for the labels whose point is not at version 0.
        self._versions: dict[int, int] = {} if loaded is None else _versions_in(raw)
        raw.set_ef(params.ef_search)
        self._index = raw
        self._lock = RWLock()
        # Marked-deleted slots not yet reused by a new label (hnswlib does not report this itself).
        self._free_slots = 0
        # New labels go into deleted slots, and replaced vectors are updated in place, only once this share of
        # the slots is deleted (0: always). hnswlib does both by re-linking the neighbourhood (updatePoint),
        # 4-5x the cost of appending a point (bench/slot_reuse.py), so below the rebuild threshold points are
        # appended and the background rebuild reclaims the slots; past it (a rebuild is due, or rebuilds are
        # off) slots are reused, which bounds the memory.
        self.reuse_slots_from = 0.0

    # --- reads ---

    @property
    def live_count(self) -> int:
        return int(self._index.element_count) - self._free_slots

    def nbytes(self) -> dict[str, int]:
        """hnswlib's memory: its own copy of the vectors, and the links (2M per slot on level 0, about
        1/M of that again on the upper levels), for every allocated slot."""
        slots = int(self._index.get_max_elements())
        links = slots * ((2 * self.params.m + 1) * 4 + 8)
        return {"graph_vectors": slots * self.dimension * 4, "graph_links": int(links * (1 + 1 / self.params.m))}

    @property
    def dirty(self) -> bool:
        return self.applied_seq != self.saved_seq

    @property
    def deleted_ratio(self) -> float:
        """The share of the graph's slots that hold deleted points: searches still walk through them."""
        slots = int(self._index.element_count)
        return self._free_slots / slots if slots else 0.0

    def vectors_of(self, labels: list[int]) -> tuple[list[int], npt.NDArray[np.float32]]:
        """The stored vectors of those labels that are live in the graph now (normalised for cosine)."""
        with self._lock.read():
            slots = [self.hnsw_label(label) for label in labels]
            try:
                return labels, np.asarray(self._index.get_items(slots), dtype=np.float32).reshape(-1, self.dimension)
            except RuntimeError:  # one of them was deleted meanwhile: one at a time
                found: list[int] = []
                rows: list[npt.NDArray[np.float32]] = []
                for label, slot in zip(labels, slots, strict=True):
                    try:
                        rows.append(np.asarray(self._index.get_items([slot]), dtype=np.float32).reshape(-1))
                    except RuntimeError:
                        continue
                    found.append(label)
        return found, np.stack(rows) if rows else np.empty((0, self.dimension), np.float32)

    def search(
        self,
        vector: npt.NDArray[np.float32],
        k: int,
        ef: int | None = None,
        accept: Callable[[int], bool] | None = None,
    ) -> tuple[list[int], list[float]] | None:
        """Up to k nearest labels and their distances, best first.

        With `accept` (hnswlib's filter callable) only accepted labels come back, and None means that
        fewer than k accepted labels were reached: the caller decides what to do instead.
        """
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        wanted = max(ef or self.params.ef_search, k)
        if accept is not None:
            return self._search_accepting(query, k, wanted, accept)
        with self._lock.read():
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

    def _search_accepting(
        self, query: npt.NDArray[np.float32], k: int, ef: int, accept: Callable[[int], bool]
    ) -> tuple[list[int], list[float]] | None:
        k = min(k, self.live_count)
        if k <= 0:
            return [], []
        own_ef = ef != self.params.ef_search
        with self._lock.write() if own_ef else self._lock.read():
            if own_ef:
                self._index.set_ef(ef)
            try:
                by_slot = accept if not self._versions else lambda slot: accept(slot & _LABEL_MASK)
                labels, distances = self._index.knn_query(query, k=k, num_threads=1, filter=by_slot)
            except RuntimeError:  # fewer than k accepted labels reachable
                return None
            finally:
                if own_ef:
                    self._index.set_ef(self.params.ef_search)
        return (labels[0] & _LABEL_MASK).tolist(), distances[0].tolist()

    def _knn(self, query: npt.NDArray[np.float32], k: int) -> tuple[list[int], list[float]] | None:
        k = min(k, self.live_count)
        if k <= 0:
            return [], []
        try:
            labels, distances = self._index.knn_query(query, k=k, num_threads=1)
        except RuntimeError:  # hnswlib: fewer than k results reachable at the current ef
            return None
        return (labels[0] & _LABEL_MASK).tolist(), distances[0].tolist()

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

        Below `reuse_slots_from` a replaced vector is a new point, appended under the label's next version,
        and its old point is deleted; at or past it the point is updated in place (hnswlib's updatePoint), as
        a new label then fills a deleted slot. Never replace_deleted for an existing label: hnswlib would move
        it into a vacant slot and leave its old slot live.
        """
        data = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(labels), self.dimension)
        new_rows = [row for row, new in enumerate(is_new) if new]
        old_rows = [row for row, new in enumerate(is_new) if not new]
        # The caller holds the collection's write lock, so no other write interleaves with these steps.
        with self._lock.write():
            reuse = self.deleted_ratio >= self.reuse_slots_from
            appended = len(new_rows) - (self._free_slots if reuse else 0) + (0 if reuse else len(old_rows))
            needed = int(self._index.element_count) + max(0, appended)
            capacity = int(self._index.get_max_elements())
            if needed > capacity:
                self._index.resize_index(max(needed, capacity * 2))
        # The graph work goes in slices, each under the lock on its own, so that searches run between
        # them: replacing existing vectors is slow in hnswlib, and 100 replacements held searches for
        # 300-500 ms as one step.
        for rows, replace_deleted in ((old_rows, False), (new_rows, reuse)):
            for start in range(0, len(rows), GRAPH_WRITE_SLICE):
                chunk = rows[start : start + GRAPH_WRITE_SLICE]
                part = [labels[r] for r in chunk]
                with self._lock.write():
                    if rows is old_rows and not reuse:
                        self._bump_versions(part)
                    self._index.add_items(
                        data[chunk],
                        np.asarray([self.hnsw_label(label) for label in part], dtype=np.uint64),
                        num_threads=-1,
                        replace_deleted=replace_deleted,
                    )
                    if replace_deleted:
                        self._free_slots -= min(self._free_slots, len(part))
        with self._lock.write():
            self.applied_seq = max(self.applied_seq, seq)

    def hnsw_label(self, label: int) -> int:
        """The hnswlib label of a document label's current point (document_label is the inverse)."""
        return label | (self._versions.get(label, 0) << _LABEL_BITS)

    def _bump_versions(self, labels: list[int]) -> None:
        """Delete these labels' current points; the next add puts each at its next version. Call under the
        write lock, in the same hold as that add, so that searches never miss the document."""
        for label in labels:
            version = self._versions.get(label, 0)
            if version == _MAX_VERSION:
                raise RuntimeError(f"label {label} was replaced {version} times without a rebuild")
            self._index.mark_deleted(self.hnsw_label(label))
            self._versions[label] = version + 1
        self._free_slots += len(labels)

    def known_labels(self) -> set[int]:
        """Labels with a slot in the index, deleted ones included."""
        with self._lock.read():
            return {int(x) & _LABEL_MASK for x in self._index.get_ids_list()}

    def delete(self, labels: list[int], *, seq: int) -> None:
        with self._lock.write():
            for label in labels:
                try:
                    self._index.mark_deleted(self.hnsw_label(label))
                    self._free_slots += 1
                except RuntimeError:
                    pass  # not in the index (replayed twice, or never added): nothing to remove
                self._versions.pop(label, None)  # a deleted label never comes back
            self.applied_seq = max(self.applied_seq, seq)

    def advance(self, seq: int) -> None:
        """Every write up to `seq` is applied (some left no trace here: rows replaced later, empty deletes)."""
        with self._lock.write():
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
    def load_checkpoint(cls, directory: Path, *, dimension: int, metric: str, params: HnswParams) -> HnswIndex | None:
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
            return cls(dimension=dimension, metric=metric, params=params, loaded=(raw, seq))
        return None

    @classmethod
    def built_from(
        cls,
        labels: npt.NDArray[np.uint64],
        vectors: npt.NDArray[np.float32],
        *,
        dimension: int,
        metric: str,
        params: HnswParams,
        seq: int,
        should_stop: Callable[[], bool] = lambda: False,
        threads: int = -1,
    ) -> HnswIndex | None:
        """A fresh graph of exactly these points, added in batches on `threads` threads (a background rebuild:
        nothing else sees it yet, so no lock). None if `should_stop` said so between batches."""
        raw = hnswlib.Index(space=metric, dim=dimension)
        raw.init_index(
            max_elements=max(_MIN_CAPACITY, len(labels) + len(labels) // 8),
            ef_construction=params.ef_construction,
            M=params.m,
            allow_replace_deleted=True,
        )
        for start in range(0, len(labels), _BUILD_BATCH):
            if should_stop():
                return None
            part = slice(start, start + _BUILD_BATCH)
            raw.add_items(np.ascontiguousarray(vectors[part]), labels[part], num_threads=threads)
        return cls(dimension=dimension, metric=metric, params=params, loaded=(raw, seq))

    def adopt(self, rebuilt: HnswIndex) -> None:
        """Serve `rebuilt`'s graph from now on, in one step under the write lock: searches in flight finish on
        the old graph, later ones use the new. The caller makes sure `rebuilt` holds this index's applied_seq
        state; the checkpoint on disk is older than the graph now, so the next save writes one."""
        with self._lock.write():
            self._index = rebuilt._index
            self._free_slots = rebuilt._free_slots
            self._versions = rebuilt._versions
            self._index.set_ef(self.params.ef_search)
            self.saved_seq = -1

    def reconcile_free_slots(self, live_count: int) -> None:
        """After catch-up the index holds exactly the database's rows; the rest are deleted slots."""
        self._free_slots = max(0, int(self._index.element_count) - live_count)


def remove_index_files(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)

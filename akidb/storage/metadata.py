"""An in-memory columnar mirror of a collection's document ids and metadata, for vectorised filtering.

Rows are positions, append-only: replacing a document kills its old position and appends a new one, so a
write never moves data that a concurrent reader could be looking at, and compaction (when dead positions
outnumber live ones) renumbers everything in one pass under the write lock.

Each metadata path (("author", "name") for {"author": {"name": ...}}) is a column stored *sparsely*, as an
append-only table of (position, type tag, float64 value) entries for the documents that have the path. Dense
per-position columns would cost O(columns x documents) when keys vary between documents (a key per user, per
tenant); the sparse table costs O(values). Bools are stored as 0/1 and strings as codes into the column's own
dictionary; a column that holds arrays also has an element table of the same shape for `$contains`. Paths do
not descend into arrays, and array elements that are themselves arrays or objects are not recorded (a scalar
never equals them).

Numbers are compared as float64: integers beyond 2**53 compare with double precision, and integers beyond
the double range as +/- infinity. Bool is not a number.
"""

from __future__ import annotations

import bisect
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import msgspec
import numpy as np
from numpy.typing import NDArray

from akidb.storage.metadata_columns import (
    ARRAY,
    BOOL,
    NULL,
    NUMBER,
    OBJECT,
    STRING,
    Buffer,
    Buffers,
    Column,
    Path,
    Scalar,
    Table,
    as_number,
    grown,
    scalar_entry,
)
from akidb.storage.rwlock import RWLock

__all__ = ["MetadataMirror", "Path", "Scalar", "as_number"]

_COMPARE_OPS = ("$gt", "$gte", "$lt", "$lte")
# Compaction waits for at least this many dead positions, so a small collection never churns.
DEFAULT_COMPACT_MIN_DEAD = 1024
_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(dict[str, Any])


class MetadataMirror:
    """Every live document's label, id and metadata. Writes come one at a time (the caller holds the
    collection's write lock); searches read concurrently inside `reading()`."""

    def __init__(self, *, compact_min_dead: int = DEFAULT_COMPACT_MIN_DEAD) -> None:
        self._lock = RWLock()
        self._local = threading.local()
        self._compact_min_dead = compact_min_dead
        self._n = 0
        self._dead = 0
        self._alive: NDArray[np.bool_] = np.zeros(0, dtype=np.bool_)
        self._label_at: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._id_at: NDArray[np.object_] = np.empty(0, dtype=object)
        # Each position's metadata as compact JSON (bytes): what a search hit shows, without a SQL read.
        # Bytes rather than the dicts: a third of the memory, and no caller can change what is held.
        self._meta_at: NDArray[np.object_] = np.empty(0, dtype=object)
        self._pos_of_label: dict[int, int] = {}
        self._pos_of_id: dict[str, int] = {}
        self._columns: dict[Path, Column] = {}

    # -- writes ---------------------------------------------------------------------------------------------

    def upsert(self, labels: Sequence[int], ids: Sequence[str], metadatas: Sequence[Mapping[str, Any]]) -> None:
        """Insert or replace documents; a label or an id already present replaces that document."""
        if not len(labels) == len(ids) == len(metadatas):
            raise ValueError("labels, ids and metadatas differ in length")
        with self._lock.write():
            start = self._n
            buffers: Buffers = {}
            # Flatten first: a value of an unsupported type raises before anything changes.
            for i, meta in enumerate(metadatas):
                self._flatten(meta, (), start + i, buffers)
            encoded = [_ENCODER.encode(meta) for meta in metadatas]
            end = start + len(labels)
            self._alive = grown(self._alive, end, False)
            self._label_at = grown(self._label_at, end)
            self._id_at = grown(self._id_at, end, None)
            self._meta_at = grown(self._meta_at, end, None)
            self._meta_at[start:end] = encoded
            for i, (label, doc_id) in enumerate(zip(labels, ids, strict=True)):
                label = int(label)
                for old in (self._pos_of_label.get(label), self._pos_of_id.get(doc_id)):
                    if old is not None and self._alive[old]:
                        self._kill(old)
                p = start + i
                self._alive[p] = True
                self._label_at[p] = label
                self._id_at[p] = doc_id
                self._pos_of_label[label] = p
                self._pos_of_id[doc_id] = p
            self._n = end
            for buf in buffers.values():
                buf.column.values.extend(buf.vp, buf.vt, buf.vv)
                if buf.ep:
                    buf.column.elements.extend(buf.ep, buf.et, buf.ev)
            self._maybe_compact()

    def delete(self, labels: Iterable[int]) -> None:
        """Remove documents by label; unknown labels are ignored."""
        with self._lock.write():
            for label in labels:
                p = self._pos_of_label.get(int(label))
                if p is not None:
                    self._kill(p)
            self._maybe_compact()

    def _kill(self, p: int) -> None:
        self._alive[p] = False
        self._dead += 1
        label, doc_id = int(self._label_at[p]), self._id_at[p]
        if self._pos_of_label.get(label) == p:
            del self._pos_of_label[label]
        if self._pos_of_id.get(doc_id) == p:
            del self._pos_of_id[doc_id]

    def _column(self, path: Path) -> Column:
        column = self._columns.get(path)
        if column is None:
            column = self._columns[path] = Column()
        return column

    def _flatten(self, obj: Mapping[str, Any], prefix: Path, p: int, out: Buffers) -> None:
        for key, v in obj.items():
            path = (*prefix, key)
            buf = out.get(path)
            if buf is None:
                buf = out[path] = Buffer(self._column(path))
            # The common exact types first: this loop is most of an upsert's cost.
            t = type(v)
            column = buf.column
            if t is str:
                tag, val = STRING, float(column.code(v))
            elif t is float:
                tag, val = NUMBER, v
            elif t is int:
                tag, val = NUMBER, as_number(v)
            elif t is dict or (t is not list and isinstance(v, Mapping)):
                tag, val = OBJECT, 0.0
                self._flatten(v, path, p, out)
            elif t is list or t is tuple:
                tag, val = ARRAY, 0.0
                for e in v:
                    etag, eval_ = scalar_entry(e, column)
                    if etag:
                        buf.ep.append(p)
                        buf.et.append(etag)
                        buf.ev.append(eval_)
                    elif not isinstance(e, Mapping | list | tuple):
                        raise TypeError(f"unsupported metadata value of type {type(e).__name__}")
            else:
                tag, val = scalar_entry(v, column)
                if not tag:
                    raise TypeError(f"unsupported metadata value of type {t.__name__}")
            buf.vp.append(p)
            buf.vt.append(tag)
            buf.vv.append(val)

    def _maybe_compact(self) -> None:
        if self._dead <= self._compact_min_dead or self._dead <= self._n - self._dead:
            return
        alive = self._alive[: self._n]
        new_pos = np.cumsum(alive, dtype=np.int64) - 1
        for path, column in list(self._columns.items()):
            column.compact(alive, new_pos)
            if column.values.n == 0:
                del self._columns[path]
        self._label_at = self._label_at[: self._n][alive]
        self._id_at = self._id_at[: self._n][alive]
        self._meta_at = self._meta_at[: self._n][alive]
        self._n = len(self._label_at)
        self._alive = np.ones(self._n, dtype=np.bool_)
        self._dead = 0
        self._pos_of_label = {label: p for p, label in enumerate(self._label_at.tolist())}
        self._pos_of_id = {doc_id: p for p, doc_id in enumerate(self._id_at.tolist())}

    # -- reads ----------------------------------------------------------------------------------------------

    def reading(self) -> AbstractContextManager[None]:
        """Hold the read lock (re-entrant within a thread) while calling the primitives below; a thread
        must not write while it holds it."""
        return self._reading()

    @contextmanager
    def _reading(self) -> Iterator[None]:
        depth: int = getattr(self._local, "depth", 0)
        if depth:
            self._local.depth = depth + 1
            try:
                yield
            finally:
                self._local.depth = depth
            return
        with self._lock.read():
            self._local.depth = 1
            try:
                yield
            finally:
                self._local.depth = 0

    @property
    def live_count(self) -> int:
        return len(self._pos_of_id)

    @property
    def position_count(self) -> int:
        """Length of every mask (live and dead positions)."""
        return self._n

    def alive(self) -> NDArray[np.bool_]:
        """A fresh copy: callers may modify it in place."""
        return self._alive[: self._n].copy()

    def _none(self) -> NDArray[np.bool_]:
        return np.zeros(self._n, dtype=np.bool_)

    def _mask(self, table: Table, sel: NDArray[np.bool_] | None) -> NDArray[np.bool_]:
        """The positions of the selected entries (all entries when `sel` is None) as a mask."""
        mask = self._none()
        if table.identity:
            mask[: table.n] = True if sel is None else sel
        else:
            pos = table.pos[: table.n]
            mask[pos if sel is None else pos[sel]] = True
        return mask

    def _match(self, path: Path, value: Scalar, *, elements: bool) -> NDArray[np.bool_]:
        column = self._columns.get(path)
        if column is None:
            return self._none()
        table = column.elements if elements else column.values
        tag, val = table.tag[: table.n], table.val[: table.n]
        if value is None:
            sel = tag == NULL
        elif value is True or value is False:
            sel = (tag == BOOL) & (val == float(value))
        elif isinstance(value, str):
            code = column.codes.get(value)
            if code is None:
                return self._none()
            sel = (tag == STRING) & (val == code)
        else:
            sel = (tag == NUMBER) & (val == as_number(value))
        return self._mask(table, sel)

    def equals(self, path: Path, value: Scalar) -> NDArray[np.bool_]:
        """Typed equality: 1 == 1.0, True != 1, None matches a present null; an array never equals a scalar."""
        return self._match(path, value, elements=False)

    def contains(self, path: Path, value: Scalar) -> NDArray[np.bool_]:
        """The field is an array holding this scalar (typed as in `equals`)."""
        return self._match(path, value, elements=True)

    def compare(self, path: Path, op: str, value: int | float | str) -> NDArray[np.bool_]:
        """op in $gt $gte $lt $lte: numbers against numbers, strings against strings (by code point)."""
        if op not in _COMPARE_OPS:
            raise ValueError(f"unknown comparison {op!r}")
        column = self._columns.get(path)
        if column is None or isinstance(value, bool):
            return self._none()
        table = column.values
        if isinstance(value, str):
            strings, rank = column.string_order()
            # Distinct strings ranked left..right-1 equal `value`; those below are smaller, those above larger.
            left, right = bisect.bisect_left(strings, value), bisect.bisect_right(strings, value)
            bound = {"$gt": right, "$gte": left, "$lt": left, "$lte": right}[op]
            ok = rank >= bound if op in ("$gt", "$gte") else rank < bound
            # One extra False at the end, for the code -1 of entries that are not strings.
            return self._mask(table, np.append(ok, False)[table.codes()])
        tag, val = table.tag[: table.n], table.val[: table.n]
        cmp = {"$gt": np.greater, "$gte": np.greater_equal, "$lt": np.less, "$lte": np.less_equal}[op]
        return self._mask(table, (tag == NUMBER) & cmp(val, as_number(value)))

    def isin(self, path: Path, values: Sequence[Scalar]) -> NDArray[np.bool_]:
        """Equality with any of `values` (typed as in `equals`)."""
        column = self._columns.get(path)
        if column is None or not values:
            return self._none()
        table = column.values
        tag, val = table.tag[: table.n], table.val[: table.n]
        numbers = [as_number(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        bools = [float(v) for v in values if v is True or v is False]
        codes = [c for v in values if isinstance(v, str) and (c := column.codes.get(v)) is not None]
        sel = np.zeros(table.n, dtype=np.bool_)
        for kind, wanted in ((NUMBER, numbers), (BOOL, bools)):
            if wanted:
                sel |= (tag == kind) & np.isin(val, np.asarray(wanted, dtype=np.float64))
        if codes:
            # A lookup table over the column's dictionary (plus a False for -1): one gather for any number of strings.
            hit = np.zeros(len(column.strings) + 1, dtype=np.bool_)
            hit[codes] = True
            sel |= hit[table.codes()]
        if any(v is None for v in values):
            sel |= tag == NULL
        return self._mask(table, sel)

    def exists(self, path: Path) -> NDArray[np.bool_]:
        """The path is present (null included)."""
        column = self._columns.get(path)
        return self._none() if column is None else self._mask(column.values, None)

    def labels_at(self, mask: NDArray[np.bool_]) -> NDArray[np.int64]:
        return self._label_at[: self._n][mask]

    def ids_at(self, mask: NDArray[np.bool_]) -> list[str]:
        ids: list[str] = self._id_at[: self._n][mask].tolist()
        return ids

    def hits(self, labels: Sequence[int], *, with_metadata: bool) -> list[tuple[str, dict[str, Any] | None] | None]:
        """Per label: (id, metadata if asked for), or None for a label no live document holds. Takes the read
        lock itself: a compaction renumbers positions."""
        out: list[tuple[str, dict[str, Any] | None] | None] = []
        with self.reading():
            get, id_at, meta_at = self._pos_of_label.get, self._id_at, self._meta_at
            for label in labels:
                p = get(label)
                if p is None:
                    out.append(None)
                else:
                    out.append((id_at[p], _DECODER.decode(meta_at[p]) if with_metadata else None))
        return out

    def positions_of_ids(self, ids: Sequence[str]) -> NDArray[np.int64]:
        """Positions of the live documents with these ids; unknown ids are skipped."""
        get = self._pos_of_id.get
        return np.fromiter((p for i in ids if (p := get(i)) is not None), dtype=np.int64)

    def nbytes(self) -> int:
        """Estimated memory: the arrays, the id strings, the dictionaries and the columns' strings."""
        with self.reading():
            total = self._alive.nbytes + self._label_at.nbytes + self._id_at.nbytes + sys.getsizeof(self._columns)
            total += self._meta_at.nbytes + sum(sys.getsizeof(m) for m in self._meta_at[: self._n] if m is not None)
            total += sum(sys.getsizeof(i) for i in self._pos_of_id)  # the id strings, shared with _id_at
            # The two dictionaries, with an int object per label and one per position (shared by both).
            total += sys.getsizeof(self._pos_of_id) + sys.getsizeof(self._pos_of_label) + 28 * 2 * len(self._pos_of_id)
            total += sum(column.nbytes() + sys.getsizeof(path) for path, column in self._columns.items())
            return int(total)

"""The column storage behind `MetadataMirror`: sparse (position, type tag, float64 value) tables per metadata
path, each string column with its own dictionary of codes. See `akidb.storage.metadata` for the model."""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np
from numpy.typing import NDArray

Scalar = str | int | float | bool | None
Path = tuple[str, ...]

# Type tags. A missing path has no entry at all.
NULL, BOOL, NUMBER, STRING, ARRAY, OBJECT = 1, 2, 3, 4, 5, 6


def as_number(value: int | float) -> float:
    """A JSON number as float64; integers past the double range become +/- infinity instead of raising."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def grown(array: NDArray[Any], needed: int, fill: Any = 0) -> NDArray[Any]:
    if needed <= len(array):
        return array
    out = np.full(max(needed, 2 * len(array), 8), fill, dtype=array.dtype)
    out[: len(array)] = array
    return out


class Table:
    """Growable (position, tag, value) entries, in the order they were written."""

    __slots__ = ("identity", "n", "pos", "tag", "val")

    def __init__(self) -> None:
        self.n = 0
        self.pos: NDArray[np.int64] = np.empty(0, dtype=np.int64)
        self.tag: NDArray[np.uint8] = np.empty(0, dtype=np.uint8)
        self.val: NDArray[np.float64] = np.empty(0, dtype=np.float64)
        # Entry i is at position i (every document so far has this path): a selection of entries is then
        # already a mask over positions, with no scatter. The common case for a collection's regular keys.
        self.identity = True

    def extend(self, pos: list[int], tag: list[int], val: list[float]) -> None:
        start, end = self.n, self.n + len(pos)
        self.pos, self.tag, self.val = grown(self.pos, end), grown(self.tag, end), grown(self.val, end)
        self.pos[start:end] = pos
        self.tag[start:end] = tag
        self.val[start:end] = val
        self.n = end
        if self.identity:
            self.identity = bool(np.array_equal(self.pos[start:end], np.arange(start, end)))

    def keep(self, alive: NDArray[np.bool_], new_pos: NDArray[np.int64]) -> None:
        pos = self.pos[: self.n]
        sel = alive[pos]
        self.pos, self.tag, self.val = new_pos[pos[sel]], self.tag[: self.n][sel], self.val[: self.n][sel]
        self.n = len(self.pos)
        self.identity = bool(np.array_equal(self.pos, np.arange(self.n)))

    def codes(self) -> NDArray[np.intp]:
        """Each entry's string code, -1 for entries that are not strings."""
        return np.where(self.tag[: self.n] == STRING, self.val[: self.n], -1).astype(np.intp)

    def nbytes(self) -> int:
        return int(self.pos.nbytes + self.tag.nbytes + self.val.nbytes)


class Column:
    __slots__ = ("codes", "elements", "order", "strings", "values")

    def __init__(self) -> None:
        self.values = Table()
        self.elements = Table()
        self.codes: dict[str, int] = {}
        self.strings: list[str] = []
        # (distinct strings sorted, rank of each code), built on the first string comparison after a change.
        self.order: tuple[list[str], NDArray[np.int64]] | None = None

    def code(self, s: str) -> int:
        c = self.codes.get(s)
        if c is None:
            c = self.codes[s] = len(self.strings)
            self.strings.append(s)
            self.order = None
        return c

    def string_order(self) -> tuple[list[str], NDArray[np.int64]]:
        order = self.order
        if order is None:
            # Readers may race to build this; each builds the same thing and the assignment is atomic.
            by_rank = sorted(range(len(self.strings)), key=self.strings.__getitem__)
            rank = np.empty(len(by_rank), dtype=np.int64)
            rank[by_rank] = np.arange(len(by_rank))
            order = self.order = ([self.strings[c] for c in by_rank], rank)
        return order

    def compact(self, alive: NDArray[np.bool_], new_pos: NDArray[np.int64]) -> None:
        self.values.keep(alive, new_pos)
        self.elements.keep(alive, new_pos)
        tables = (self.values, self.elements)
        used = np.unique(np.concatenate([t.val[: t.n][t.tag[: t.n] == STRING] for t in tables])).astype(np.int64)
        if len(used) == len(self.strings):
            return
        remap = np.full(len(self.strings), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        for t in tables:
            is_str = t.tag[: t.n] == STRING
            t.val[: t.n][is_str] = remap[t.val[: t.n][is_str].astype(np.int64)]
        self.strings = [self.strings[c] for c in used.tolist()]
        self.codes = {s: i for i, s in enumerate(self.strings)}
        self.order = None

    def nbytes(self) -> int:
        strings = sum(sys.getsizeof(s) for s in self.strings)
        return self.values.nbytes() + self.elements.nbytes() + strings + sys.getsizeof(self.codes)


class Buffer:
    """One batch's new entries for one column: (pos, tag, val) lists for values and for array elements."""

    __slots__ = ("column", "ep", "et", "ev", "vp", "vt", "vv")

    def __init__(self, column: Column) -> None:
        self.column = column
        self.vp: list[int] = []
        self.vt: list[int] = []
        self.vv: list[float] = []
        self.ep: list[int] = []
        self.et: list[int] = []
        self.ev: list[float] = []


Buffers = dict[Path, Buffer]


def scalar_entry(v: Any, column: Column) -> tuple[int, float]:
    """(tag, value) of a scalar; tag 0 for anything else."""
    if isinstance(v, str):
        return STRING, float(column.code(v))
    if v is None:
        return NULL, 0.0
    if v is True or v is False:
        return BOOL, float(v)
    if isinstance(v, int | float):
        return NUMBER, as_number(v)
    return 0, 0.0

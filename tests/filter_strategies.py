"""Hypothesis strategies for metadata and for filters that hit it: values that collide across types (1, 1.0,
True, "1"), nested objects, arrays, dotted paths, and filter values taken from the documents."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from akidb.collections.filters import parse_filter
from akidb.errors import InvalidRequest

KEYS = ["a", "b", "c"]
# Mostly values that collide with one another (1, 1.0, True, "1"; strings either side of "Z" and "a").
POOL = st.sampled_from([0, -0.0, 1, 1.0, 2.5, True, False, None, "1", "a", "", "Z", "é", "ab"])
SCALARS = st.one_of(POOL, POOL, POOL, st.integers(-2, 2), st.text(alphabet="aZé1", max_size=2))
ARRAYS = st.lists(
    st.one_of(SCALARS, st.lists(SCALARS, max_size=2), st.dictionaries(st.sampled_from(KEYS), SCALARS, max_size=2)),
    max_size=3,
)
NESTED = st.dictionaries(
    st.sampled_from([*KEYS, "a.b"]),
    st.one_of(SCALARS, ARRAYS, st.dictionaries(st.sampled_from(KEYS), SCALARS, max_size=2)),
    max_size=3,
)
VALUES = st.one_of(SCALARS, SCALARS, SCALARS, ARRAYS, NESTED)
METADATA = st.dictionaries(st.sampled_from([*KEYS, "a.b"]), VALUES, min_size=2, max_size=4)

PATHS = st.sampled_from(["a", "b", "c", "a", "b", "c", "a.b", "b.a", "a.b.c", "d"])


def scalar_pairs(value: Any, path: str = "") -> list[tuple[str, Any]]:
    """(dotted path, scalar) for every scalar in a document, array elements under the array's path."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in scalar_pairs(v, f"{path}.{k}" if path else k)]
    if isinstance(value, list):
        return [p for v in value for p in scalar_pairs(v, path)]
    return [(path, value)]


def is_valid_filter(raw: dict[str, Any]) -> bool:
    try:
        parse_filter(raw)
    except InvalidRequest:
        return False
    return True


def filters(metadatas: list[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Random filters whose values are often taken from the documents, so that they hit."""
    pairs = [p for md in metadatas for p in scalar_pairs(md)]
    values = st.one_of(SCALARS, st.sampled_from([v for _, v in pairs])) if pairs else SCALARS
    ranged = values.filter(lambda v: v is not None and not isinstance(v, bool))
    single = st.one_of(
        st.tuples(st.sampled_from(["$eq", "$ne", "$contains"]), values),
        st.tuples(st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), ranged),
        st.tuples(st.sampled_from(["$in", "$nin"]), st.lists(values, max_size=4)),
        st.tuples(st.just("$exists"), st.booleans()),
    )
    condition = st.one_of(values, st.lists(single, min_size=1, max_size=2).map(dict))
    one = st.dictionaries(PATHS, condition, min_size=1, max_size=1)
    leaf = st.one_of(one, one, st.dictionaries(PATHS, condition, max_size=2))
    if pairs:
        ops = st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$contains"])
        hit = st.builds(
            lambda pv, op: {pv[0]: {op: [pv[1]] if op in ("$in", "$nin") else pv[1]}}, st.sampled_from(pairs), ops
        )
        leaf = st.one_of(leaf, hit.filter(lambda f: is_valid_filter(f)))
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.builds(lambda fs: {"$and": fs}, st.lists(inner, min_size=1, max_size=3)),
            st.builds(lambda fs: {"$or": fs}, st.lists(inner, min_size=1, max_size=3)),
            st.builds(lambda f: {"$not": f}, inner),
            st.builds(lambda f, g: {**f, **g}, leaf, inner),
        ),
        max_leaves=6,
    )

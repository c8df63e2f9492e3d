from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from akidb.collections.filters import count, parse_filter, select
from akidb.errors import InvalidRequest
from akidb.storage.metadata import MetadataMirror
from tests.filter_reference import matches
from tests.filter_strategies import KEYS, METADATA, filters, is_valid_filter, scalar_pairs


def _deep(levels: int) -> dict[str, Any]:
    f: dict[str, Any] = {"a": 1}
    for _ in range(levels - 1):
        f = {"$not": f}
    return f


# (filter, the path its error detail starts with)
MALFORMED: list[tuple[object, str]] = [
    ([1], "filter: expected an object"),
    ("a", "filter: expected an object"),
    ({"year": {"$foo": 1}}, "filter.year.$foo: unknown operator '$foo'"),
    ({"$foo": 1}, "filter.$foo: unknown operator '$foo'"),
    ({"$eq": 1}, "filter.$eq:"),
    ({"$in": [1]}, "filter.$in:"),
    ({"$and": {"a": 1}}, "filter.$and: expected a non-empty array of filters"),
    ({"$and": []}, "filter.$and: expected a non-empty array of filters"),
    ({"$or": "x"}, "filter.$or: expected a non-empty array of filters"),
    ({"$or": [{"a": 1}, 3]}, "filter.$or[1]: expected an object"),
    ({"$not": [{"a": 1}]}, "filter.$not: expected an object"),
    ({"$not": {"$and": [{"b": {"$lt": None}}]}}, "filter.$not.$and[0].b.$lt: expected a number or a string"),
    ({"$or": [{"a": 1}, {"lang": {"$in": "en"}}]}, "filter.$or[1].lang.$in: expected an array of scalars"),
    ({"lang": {"$in": ["en", ["fr"]]}}, "filter.lang.$in: expected an array of scalars"),
    ({"lang": {"$nin": [{"a": 1}]}}, "filter.lang.$nin: expected an array of scalars"),
    ({"year": {"$gt": True}}, "filter.year.$gt: expected a number or a string"),
    ({"year": {"$gte": [1]}}, "filter.year.$gte: expected a number or a string"),
    ({"year": {"$exists": 1}}, "filter.year.$exists: expected true or false"),
    ({"tags": {"$contains": ["a"]}}, "filter.tags.$contains: expected a scalar"),
    ({"year": {"$eq": [1]}}, "filter.year.$eq: expected a scalar"),
    ({"year": {"$ne": {"a": 1}}}, "filter.year.$ne: expected a scalar"),
    ({"tags": ["a", "b"]}, "filter.tags: expected a scalar"),
    ({"year": {}}, "filter.year: empty operator object"),
    ({"author": {"name": "x"}}, "filter.author.name: expected a comparison operator"),
    ({"year": {"$and": [{"a": 1}]}}, "filter.year.$and:"),
    ({"a..b": 1}, "filter.a..b: empty path segment"),
    ({".a": 1}, "filter..a: empty path segment"),
    ({"": 1}, "filter.: empty field path"),
    (_deep(11), "filter: nested deeper than 10 levels"),
    ({"$and": [{f"k{i}": i} for i in range(1001)]}, "filter: more than 1,000 nodes"),
    ({"a": {"$in": list(range(6000))}, "b": {"$nin": list(range(4001))}}, "filter: more than 10,000 $in/$nin values"),
]


@pytest.mark.parametrize(("raw", "detail"), MALFORMED)
def test_malformed_filters_name_the_path(raw: object, detail: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_filter(raw)
    assert info.value.detail.startswith(detail), info.value.detail
    assert info.value.status_code == 422
    assert detail.startswith(info.value.extra["field"] + ":")


def test_limits_are_inclusive_and_field_is_named() -> None:
    assert parse_filter(_deep(10)) is not None
    assert parse_filter({"a": {"$in": list(range(10_000))}}) is not None
    assert parse_filter({"$and": [{f"k{i}": i} for i in range(999)]}) is not None
    with pytest.raises(InvalidRequest, match=r"^where\.x\.\$gt:"):
        parse_filter({"x": {"$gt": None}}, field="where")


def test_empty_filter_matches_everything() -> None:
    assert parse_filter(None) is None
    assert parse_filter({}) is None
    m = _mirror([{"a": 1}, {}])
    assert count(None, m) == 2
    assert count(parse_filter({"$and": [{}]}), m) == 2
    assert count(parse_filter({"$not": {}}), m) == 0


# -- readable examples of the traps -------------------------------------------------------------------------


def _mirror(metadatas: list[dict[str, Any]]) -> MetadataMirror:
    m = MetadataMirror()
    m.upsert(list(range(len(metadatas))), [f"d{i}" for i in range(len(metadatas))], metadatas)
    return m


def _ids(raw: dict[str, Any], metadatas: list[dict[str, Any]]) -> list[str]:
    got = select(parse_filter(raw), _mirror(metadatas)).ids
    assert got == [f"d{i}" for i, md in enumerate(metadatas) if matches(raw, md)]
    return got


def test_null_is_a_value_and_missing_is_not() -> None:
    docs: list[dict[str, Any]] = [{"f": None}, {}, {"f": 0}]
    assert _ids({"f": None}, docs) == ["d0"]
    assert _ids({"f": {"$exists": True}}, docs) == ["d0", "d2"]
    assert _ids({"f": {"$exists": False}}, docs) == ["d1"]
    assert _ids({"f": {"$ne": None}}, docs) == ["d1", "d2"]


def test_negations_match_documents_lacking_the_field() -> None:
    docs: list[dict[str, Any]] = [{"lang": "en"}, {"lang": "fr"}, {}]
    assert _ids({"lang": {"$ne": "en"}}, docs) == ["d1", "d2"]
    assert _ids({"lang": {"$nin": ["en"]}}, docs) == ["d1", "d2"]
    assert _ids({"$not": {"lang": "en"}}, docs) == ["d1", "d2"]
    assert _ids({"lang": {"$nin": []}}, docs) == ["d0", "d1", "d2"]
    assert _ids({"lang": {"$in": []}}, docs) == []


def test_types_never_coerce() -> None:
    docs: list[dict[str, Any]] = [{"v": True}, {"v": 1}, {"v": 1.0}, {"v": "1"}, {"v": [1]}]
    assert _ids({"v": 1}, docs) == ["d1", "d2"]
    assert _ids({"v": 1.0}, docs) == ["d1", "d2"]
    assert _ids({"v": True}, docs) == ["d0"]
    assert _ids({"v": "1"}, docs) == ["d3"]
    assert _ids({"v": {"$in": [True, "1"]}}, docs) == ["d0", "d3"]
    assert _ids({"v": {"$gte": 1}}, docs) == ["d1", "d2"]


def test_strings_and_numbers_do_not_compare() -> None:
    docs: list[dict[str, Any]] = [{"n": "10"}, {"n": 10}, {"n": 8}]
    assert _ids({"n": {"$gt": 9}}, docs) == ["d1"]
    assert _ids({"n": {"$gt": "9"}}, docs) == []  # "10" < "9" by code point
    assert _ids({"n": {"$lt": "9"}}, docs) == ["d0"]


def test_strings_compare_by_code_point() -> None:
    docs: list[dict[str, Any]] = [{"s": "a"}, {"s": "Z"}, {"s": "é"}, {"s": "ab"}]
    assert _ids({"s": {"$gt": "Z"}}, docs) == ["d0", "d2", "d3"]
    assert _ids({"s": {"$lt": "a"}}, docs) == ["d1"]
    assert _ids({"s": {"$gte": "ab"}}, docs) == ["d2", "d3"]
    assert _ids({"s": {"$lte": "é"}}, docs) == ["d0", "d1", "d2", "d3"]
    assert _ids({"s": {"$gt": "b", "$lt": "z"}}, docs) == []


def test_contains_is_for_arrays_and_eq_is_not() -> None:
    docs: list[dict[str, Any]] = [{"t": ["faq", 1]}, {"t": "faq"}, {"t": [["faq"]]}, {"t": [True]}]
    assert _ids({"t": {"$contains": "faq"}}, docs) == ["d0"]
    assert _ids({"t": {"$contains": 1}}, docs) == ["d0"]
    assert _ids({"t": {"$contains": 1.0}}, docs) == ["d0"]
    assert _ids({"t": {"$contains": True}}, docs) == ["d3"]
    assert _ids({"t": "faq"}, docs) == ["d1"]
    assert _ids({"t": {"$exists": True}}, docs) == ["d0", "d1", "d2", "d3"]


def test_dotted_paths_descend_into_objects_only() -> None:
    docs: list[dict[str, Any]] = [
        {"author": {"name": "ann"}},
        {"author.name": "ann"},
        {"author": [{"name": "ann"}]},
        {"author": "ann"},
    ]
    assert _ids({"author.name": "ann"}, docs) == ["d0"]
    assert _ids({"author": {"$exists": True}}, docs) == ["d0", "d2", "d3"]
    assert _ids({"author.name": {"$ne": "bot"}}, docs) == ["d0", "d1", "d2", "d3"]


def test_replacement_delete_and_ids_restriction() -> None:
    m = _mirror([{"a": 1}, {"a": 2}, {"a": 1}])
    m.upsert([7], ["d1"], [{"a": 1}])  # a new label for an existing id replaces it
    m.delete([2, 99])
    sel = select(parse_filter({"a": 1}), m)
    assert sel.ids == ["d0", "d1"]
    assert sel.labels.tolist() == [0, 7]
    assert m.live_count == 2
    assert select(None, m, ids=["d1", "zz"]).labels.tolist() == [7]
    assert select(parse_filter({"a": 1}), m, ids=["d1", "nope", "d2"]).ids == ["d1"]
    assert count(None, m, ids=["d0", "d0", "x"]) == 1
    assert m.nbytes() > 0


def test_compaction_keeps_answers() -> None:
    m = MetadataMirror()
    for round_ in range(60):
        m.upsert(list(range(50)), [f"d{i}" for i in range(50)], [{"r": round_, "s": f"x{round_}"}] * 50)
    assert m.position_count < 3 * 50 + 2048
    assert count(parse_filter({"r": 59, "s": "x59"}), m) == 50
    assert count(parse_filter({"s": {"$lt": "x59"}}), m) == 0
    m.delete(range(50))
    assert m.live_count == 0
    assert count(parse_filter({"r": {"$exists": True}}), m) == 0


# -- differential property test against the reference evaluator --------------------------------------------

# Each op: upsert a batch of (document number, take a fresh label?, metadata), or delete document numbers.
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("upsert"), st.lists(st.tuples(st.integers(0, 29), st.booleans(), METADATA), max_size=6)),
        st.tuples(st.just("delete"), st.lists(st.integers(0, 29), max_size=10)),
        # The same replacement written many times: dead positions pile up and compaction runs.
        st.tuples(st.just("churn"), st.tuples(st.integers(0, 29), METADATA, st.integers(1, 40))),
    ),
    max_size=15,
)
SWEEP_OPS = ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$contains"]


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    initial=st.lists(METADATA, min_size=5, max_size=30),
    ops=OPS,
    data=st.data(),
    restrict=st.none() | st.none() | st.lists(st.integers(0, 35).map(lambda i: f"d{i}"), max_size=12),
    compact_min_dead=st.sampled_from([0, 3, 1024]),
)
def test_select_and_count_agree_with_the_reference(
    initial: list[dict[str, Any]],
    ops: list[Any],
    data: st.DataObject,
    restrict: list[str] | None,
    compact_min_dead: int,
) -> None:
    mirror = MetadataMirror(compact_min_dead=compact_min_dead)
    live: dict[str, tuple[int, dict[str, Any]]] = {}  # id -> (label, metadata); in the order last written
    next_label = 100
    for kind, args in [("upsert", [(i, False, md) for i, md in enumerate(initial)]), *ops]:
        if kind == "churn":
            doc, md, times = args
            kind, args = "upsert", [(doc, False, md)] * times
        if kind == "upsert":
            labels, ids, metas = [], [], []
            for doc, fresh_label, md in args:
                doc_id = f"d{doc}"
                label = live[doc_id][0] if doc_id in live and not fresh_label else next_label
                next_label += 1
                labels.append(label)
                ids.append(doc_id)
                metas.append(md)
                live.pop(doc_id, None)
                live[doc_id] = (label, md)
            mirror.upsert(labels, ids, metas)
        else:
            mirror.delete([live[f"d{d}"][0] if f"d{d}" in live else 10_000 + d for d in args])
            for d in args:
                live.pop(f"d{d}", None)
    assert mirror.live_count == len(live)

    def check(raw: dict[str, Any]) -> None:
        node = parse_filter(raw)
        expected = [i for i, (_, md) in live.items() if matches(raw, md) and (restrict is None or i in restrict)]
        sel = select(node, mirror, ids=restrict)
        assert sel.ids == expected, raw  # in position order, which is the order of the last writes
        assert sel.labels.dtype == np.int64
        assert sel.labels.tolist() == [live[i][0] for i in sel.ids]
        assert count(node, mirror, ids=restrict) == len(expected)

    for raw in data.draw(st.lists(filters([md for _, md in live.values()]), min_size=1, max_size=6)):
        check(raw)
    # Every operator at the values the documents hold: the boundaries of $gt/$gte and of typed equality.
    pairs = [p for _, md in live.values() for p in scalar_pairs(md)]
    pairs = data.draw(st.lists(st.sampled_from(pairs), max_size=5)) if pairs else []
    key = data.draw(st.sampled_from(KEYS))
    for path, value in [*pairs, *((key, v) for v in (None, True, 1, "1", "Z", ""))]:
        for op in SWEEP_OPS:
            raw = {path: {op: [value] if op in ("$in", "$nin") else value}}
            if is_valid_filter(raw):
                check(raw)


def test_readers_see_whole_batches_while_a_writer_replaces_and_compacts() -> None:
    m = MetadataMirror(compact_min_dead=50)
    ids = [f"d{i}" for i in range(20)]
    m.upsert(range(20), ids, [{"g": 0, "s": "v0"}] * 20)
    node = parse_filter({"g": {"$gte": 0}, "s": {"$gte": "v"}})
    stop = threading.Event()
    seen: list[int] = []

    def read() -> None:
        while not stop.is_set():
            sel = select(node, m)
            # A torn read would show a mix of rounds: labels of one round are 20 consecutive numbers.
            seen.append(len(sel.ids) if len({label // 20 for label in sel.labels.tolist()}) == 1 else -1)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    try:
        for round_ in range(1, 300):
            m.upsert(range(round_ * 20, round_ * 20 + 20), ids, [{"g": round_, "s": f"v{round_}"}] * 20)
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert seen
    assert set(seen) == {20}
    assert m.position_count <= 20 + 2 * 50 + 40

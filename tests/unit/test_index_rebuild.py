"""The graph rebuild (storage/rebuild.py) and health check (storage/graph_health.py) on real hnswlib and a real
SQLite store: the swapped-in graph holds exactly the live rows, writes landing during a rebuild included;
searches keep answering while it swaps; an unreachable point is found and the rebuild makes it findable.

A point is made unreachable on purpose by rewriting the graph's level-0 links through hnswlib's pickle state
(`__getstate__` / `__setstate__`): every link to it is removed from the other points' lists. A point of level 0
that is not the entry point then has no in-link at all, so no search reaches it at any ef.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import hnswlib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from akidb import observability
from akidb.config import load_settings
from akidb.storage.graph_health import GraphHealth, find_unreachable
from akidb.storage.index import HnswIndex
from akidb.storage.open_collections import OpenCollections
from akidb.storage.rebuild import rebuild_graph
from tests.unit.test_index import Harness, random_vectors


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path, dimension=16)
    yield h
    h.close()


def fill(h: Harness, n: int, *, seed: int = 0, prefix: str = "d") -> None:
    vectors = random_vectors(n, h.dimension, seed)
    for start in range(0, n, 500):
        h.upsert({f"{prefix}{i}": vectors[i] for i in range(start, min(n, start + 500))})


def registry_of(h: Harness) -> OpenCollections:
    """The harness's collection, served from a registry as the server holds it (what GraphHealth checks)."""
    registry = OpenCollections(h.store, h.feed, h.index_root)
    h.collection = registry.open(h.store.get_collection("c"))
    return registry


def rebuilds(collection: str, reason: str) -> float:
    return float(observability.INDEX_REBUILDS.labels(collection, reason)._value.get())


def test_a_rebuild_drops_the_deleted_points_and_checkpoints_the_new_graph(harness: Harness) -> None:
    fill(harness, 1200)
    harness.delete([f"d{i}" for i in range(0, 1200, 3)])
    graph = harness.collection.graph
    assert graph.deleted_ratio == pytest.approx(400 / 1200)
    before = rebuilds("c", "test")

    report = rebuild_graph(harness.collection, reason="test")

    assert report.swapped
    assert report.live == 800
    assert report.replayed == 0
    assert harness.collection.graph is graph  # the same object serves, with the new graph inside
    assert graph.deleted_ratio == 0
    assert graph.known_labels() == set(harness.rows())
    harness.assert_matches_rows(harness.collection)
    assert rebuilds("c", "test") == before + 1
    # The new graph was checkpointed at the collection's seq: a restart loads it and replays nothing.
    assert harness.checkpoints() == [f"hnsw-{harness.collection.applied_seq:020d}.bin"]
    reopened = harness.open()
    assert reopened.graph.known_labels() == set(harness.rows())
    assert reopened.graph.deleted_ratio == 0
    harness.assert_matches_rows(reopened)


def test_writes_landing_during_a_rebuild_are_in_the_swapped_graph(harness: Harness) -> None:
    """Writes during the build (before the second read of the database) and just before the swap (applied
    under the write lock): inserts, replaced vectors and deletes, all in the graph that is swapped in."""
    fill(harness, 1500)
    harness.delete([f"d{i}" for i in range(0, 1500, 4)])
    during_build = iter([True])

    def write_during_build() -> bool:
        if next(during_build, False):
            harness.upsert({f"b{i}": v for i, v in enumerate(random_vectors(40, 16, 1))})
            harness.upsert({f"d{i}": v for i, v in zip(range(1, 40, 2), random_vectors(20, 16, 2), strict=True)})
            harness.delete([f"d{i}" for i in range(2, 60, 4)] + ["b0"])
        return False

    def write_before_swap() -> None:
        harness.upsert({f"s{i}": v for i, v in enumerate(random_vectors(30, 16, 3))})
        harness.upsert({"b1": random_vectors(1, 16, 4)[0], "d5": random_vectors(1, 16, 5)[0]})
        harness.delete(["b2", "d9", "s0"])

    report = rebuild_graph(
        harness.collection, reason="test", should_stop=write_during_build, before_swap=write_before_swap
    )

    assert report.swapped
    assert report.replayed > 0
    graph = harness.collection.graph
    assert graph.deleted_ratio < 0.05  # only the deletes that landed during the rebuild are marked
    live = {label for label in graph.known_labels() if harness.collection.exact.contains([label])[0]}
    assert live == set(harness.rows())
    harness.assert_matches_rows(harness.collection)  # with l2, the graph's vectors equal the rows' latest


def test_writes_by_another_process_around_a_rebuild(harness: Harness) -> None:
    """Another process's copy of the collection writes during the build and just before the swap, after this
    copy's follower applied the first writes: the second ones are not applied here yet, so the swapped graph
    holds this copy's state (rows newer than it resolved from this copy's own structures); a catch-up then
    brings the rest."""
    fill(harness, 800)
    other = harness.open()
    during_build = iter([True])

    def others_write_during_build() -> bool:
        if next(during_build, False):
            harness.upsert({f"o{i}": v for i, v in enumerate(random_vectors(30, 16, 6))}, collection=other)
            harness.delete([f"d{i}" for i in range(0, 90, 3)], collection=other)
        return False

    state_here: dict[int, tuple[str, np.ndarray, int]] = {}

    def others_write_before_swap() -> None:
        harness.collection.catch_up()  # as its follower does: the first writes are applied here
        state_here.update(harness.rows())
        harness.upsert({f"p{i}": v for i, v in enumerate(random_vectors(20, 16, 7))}, collection=other)
        harness.upsert(
            {f"d{i}": v for i, v in zip(range(1, 40, 2), random_vectors(20, 16, 8), strict=True)}, collection=other
        )
        harness.delete([f"d{i}" for i in range(100, 160, 2)] + ["o1"], collection=other)

    report = rebuild_graph(
        harness.collection, reason="test", should_stop=others_write_during_build, before_swap=others_write_before_swap
    )

    assert report.swapped
    collection = harness.collection
    assert collection.applied_seq < harness.store.last_seq(harness.collection_id)
    graph = collection.graph
    assert graph.live_count == collection.live_count == len(state_here)
    labels = sorted(state_here)
    found, stored = graph.vectors_of(labels)
    assert found == labels
    np.testing.assert_array_equal(stored, np.stack([state_here[label][1] for label in labels]))
    collection.catch_up()
    harness.assert_matches_rows(collection)


def test_a_rebuild_told_to_stop_keeps_the_old_graph_and_checkpoint(harness: Harness) -> None:
    fill(harness, 3000)
    harness.delete([f"d{i}" for i in range(0, 3000, 2)])
    harness.collection.save(only_dirty=True)
    checkpoints = harness.checkpoints()
    ratio = harness.collection.graph.deleted_ratio

    report = rebuild_graph(harness.collection, reason="test", should_stop=lambda: True)

    assert not report.swapped
    assert harness.collection.graph.deleted_ratio == ratio
    assert harness.checkpoints() == checkpoints
    harness.assert_matches_rows(harness.collection)


def recall_at_10(graph: HnswIndex, exact_labels: list[list[int]], queries: np.ndarray) -> float:
    hits = 0
    for query, truth in zip(queries, exact_labels, strict=True):
        found = graph.search(query, 10)
        assert found is not None
        hits += len(set(found[0]) & set(truth))
    return hits / (10 * len(queries))


def test_searches_keep_answering_with_their_recall_while_a_rebuild_swaps_in(tmp_path: Path) -> None:
    """Churn (a third deleted, as many new points in the freed slots) degrades an hnswlib graph; searches in
    two threads go on through the rebuild, and no round of them has a lower recall@10 than before it."""
    h = Harness(tmp_path, dimension=16)
    try:
        fill(h, 4000, seed=1)
        h.delete([f"d{i}" for i in range(0, 4000, 3)])
        fill(h, 1334, seed=2, prefix="r")
        queries = random_vectors(300, 16, 99)
        exact = [h.collection.exact.search(q, 10)[0] for q in queries]
        graph = h.collection.graph
        before = recall_at_10(graph, exact, queries)
        during: list[float] = []
        errors: list[BaseException] = []
        done = threading.Event()

        def search_all_the_time() -> None:
            try:
                while not done.is_set():
                    during.append(recall_at_10(graph, exact, queries))
            except BaseException as exc:  # reported below, with the test's failure
                errors.append(exc)

        searchers = [threading.Thread(target=search_all_the_time) for _ in range(2)]
        for thread in searchers:
            thread.start()
        try:
            report = rebuild_graph(h.collection, reason="test")
        finally:
            done.set()
            for thread in searchers:
                thread.join()
        after = recall_at_10(graph, exact, queries)
        print(
            f"\nrecall@10 before {before:.4f}, during min {min(during):.4f} ({len(during)} rounds), after {after:.4f}"
        )
        assert report.swapped
        assert not errors
        assert len(during) >= 2
        # A round that straddles the swap mixes both graphs' answers: one query worse by one hit at most.
        assert min(during) >= before - 1 / (10 * len(queries))
        assert after >= before
    finally:
        h.close()


def cut_in_links(raw: hnswlib.Index, label: int) -> hnswlib.Index:
    """A copy of `raw` where no level-0 link points at `label` (which must be of level 0, not the entry point)."""
    state = dict(raw.__getstate__()[0])
    lookup = dict(zip(state["label_lookup_external"].tolist(), state["label_lookup_internal"].tolist(), strict=True))
    internal = int(lookup[label])
    assert state["element_levels"][internal] == 0
    assert state["enterpoint_node"] != internal
    size, count, max_m0 = state["size_data_per_element"], state["cur_element_count"], state["max_M0"]
    data = state["data_level0"].view(np.uint8).copy()
    block = data[: count * size].reshape(count, size)
    # Each slot starts with a 4-byte header (link count in the low 16 bits, flags above) and max_M0 links.
    header = block[:, 0:4].copy().view(np.uint32).reshape(count)
    links = block[:, 4 : 4 + 4 * max_m0].copy().view(np.uint32).reshape(count, max_m0)
    counts = header & 0xFFFF
    for slot in range(count):
        kept = links[slot, : counts[slot]][links[slot, : counts[slot]] != internal]
        links[slot, : len(kept)] = kept
        counts[slot] = len(kept)
    block[:, 0:4] = ((header & ~np.uint32(0xFFFF)) | counts).view(np.uint8).reshape(count, 4)
    block[:, 4 : 4 + 4 * max_m0] = links.view(np.uint8).reshape(count, -1)
    state["data_level0"] = data.view(np.int8)
    cut = hnswlib.Index.__new__(hnswlib.Index)
    cut.__setstate__((state,))
    return cut


def a_level0_label(raw: hnswlib.Index, labels: list[int]) -> int:
    state = raw.__getstate__()[0]
    lookup = dict(zip(state["label_lookup_external"].tolist(), state["label_lookup_internal"].tolist(), strict=True))
    return next(
        label
        for label in labels
        if state["element_levels"][lookup[label]] == 0 and state["enterpoint_node"] != lookup[label]
    )


def test_the_health_check_finds_an_unreachable_point_and_the_rebuild_makes_it_findable(harness: Harness) -> None:
    fill(harness, 2000, seed=3)
    health = GraphHealth(registry_of(harness), rebuild_deleted_ratio=0.2, sample=2000, seed=1)
    collection = harness.collection
    graph = collection.graph
    # A healthy graph: every live point is found by its own vector.
    assert find_unreachable(collection, 2000, np.random.default_rng(0)) == []

    labels = sorted(harness.rows())[100:]
    victim = a_level0_label(graph._index, labels)
    graph.adopt(
        HnswIndex(
            dimension=16,
            metric="l2",
            params=graph.params,
            loaded=(cut_in_links(graph._index, victim), collection.applied_seq),
        )
    )
    vector = harness.rows()[victim][1]
    for ef in (None, 2000):
        found = graph.search(vector, 10, ef=ef)
        assert found is not None
        assert victim not in found[0], "the point should be unreachable"
    assert find_unreachable(collection, 0, np.random.default_rng(0), labels=[labels[-1], victim]) == [victim]
    before = rebuilds("c", "unreachable")

    reports = health.check_all()

    assert [(r.reason, r.swapped) for r in reports] == [("unreachable", True)]
    assert rebuilds("c", "unreachable") == before + 1
    found = graph.search(vector, 10)
    assert found is not None
    assert found[0][0] == victim
    assert find_unreachable(collection, 2000, np.random.default_rng(0)) == []
    assert health.check_all() == []  # repaired: the next round finds nothing to do


def test_the_health_check_rebuilds_past_the_deleted_ratio_only(harness: Harness) -> None:
    fill(harness, 1000)
    health = GraphHealth(registry_of(harness), rebuild_deleted_ratio=0.2, sample=0)
    harness.delete([f"d{i}" for i in range(150)])
    assert health.check_all() == []
    assert observability.INDEX_DELETED_RATIO.labels("c")._value.get() == pytest.approx(0.15)
    harness.delete([f"d{i}" for i in range(150, 250)])
    before = rebuilds("c", "deleted_ratio")

    reports = health.check_all()

    assert [(r.reason, r.swapped, r.live) for r in reports] == [("deleted_ratio", True, 750)]
    assert rebuilds("c", "deleted_ratio") == before + 1
    assert observability.INDEX_DELETED_RATIO.labels("c")._value.get() == 0
    harness.assert_matches_rows(harness.collection)


ops = st.lists(
    st.tuples(st.sampled_from(["upsert", "delete"]), st.lists(st.integers(0, 30), min_size=1, max_size=8)),
    max_size=6,
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(initial=ops, during_build=ops, before_swap=ops, seed=st.integers(0, 1000))
def test_after_any_writes_around_a_rebuild_the_graph_holds_exactly_the_rows(
    tmp_path_factory: pytest.TempPathFactory,
    initial: list[tuple[str, list[int]]],
    during_build: list[tuple[str, list[int]]],
    before_swap: list[tuple[str, list[int]]],
    seed: int,
) -> None:
    h = Harness(tmp_path_factory.mktemp("prop"), dimension=4)
    rng = np.random.default_rng(seed)

    def run(steps: list[tuple[str, list[int]]]) -> None:
        for op, keys in steps:
            if op == "upsert":
                h.upsert({f"k{k}": rng.standard_normal(4).astype(np.float32) for k in keys})
            else:
                h.delete([f"k{k}" for k in keys])

    try:
        run(initial)
        pending = [during_build]

        def write_during_build() -> bool:
            if pending:
                run(pending.pop())
            return False

        report = rebuild_graph(
            h.collection, reason="test", should_stop=write_during_build, before_swap=lambda: run(before_swap)
        )
        assert report.swapped
        assert h.collection.graph.live_count == len(h.rows())
        if h.rows():
            h.assert_matches_rows(h.collection, queries=2)
    finally:
        h.close()


def test_the_health_settings_come_from_the_environment() -> None:
    settings_ = load_settings(
        environ={
            "AKIDB_STORAGE_REBUILD_DELETED_RATIO": "0.35",
            "AKIDB_STORAGE_HEALTH_CHECK_INTERVAL_S": "2.5",
            "AKIDB_STORAGE_HEALTH_CHECK_SAMPLE": "64",
        }
    )
    storage = settings_.storage
    assert (storage.rebuild_deleted_ratio, storage.health_check_interval_s, storage.health_check_sample) == (
        0.35,
        2.5,
        64,
    )
    assert load_settings(environ={}).storage.rebuild_deleted_ratio == 0.2

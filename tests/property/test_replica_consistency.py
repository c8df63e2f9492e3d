"""Consistency across processes sharing one PostgreSQL database, in one Python process: each "replica" has its
own engine, change feed, index directory and open collections, as a separate process would, and a Follower.

A stateful property test checks them against a reference model (per collection: id -> label and vector, kept
for every seq a write ended at) while writes, follows, heartbeats, tombstone purges, pauses (a replica's
heartbeats grow old, so deletions it never applied are purged and it must reopen) and restarts (from the
replica's own checkpoints, or without them) interleave. Plain tests pin the change feed's batching and the
purge rules."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from sqlalchemy import Engine, text

from akidb.config import StorageSettings
from akidb.errors import NotFound
from akidb.storage.changes import ChangeFeed
from akidb.storage.collection import OpenCollection
from akidb.storage.db import create_db_engine, migrate
from akidb.storage.follower import Follower
from akidb.storage.open_collections import OpenCollections
from akidb.storage.records import Changes, HnswParams, NewDocument
from akidb.storage.repositories import Store

Vector = npt.NDArray[np.float32]
DIM = 4
PARAMS = HnswParams(m=8, ef_construction=64, ef_search=32)
COLLECTIONS = {"vl2": "l2", "vcos": "cosine"}
ID_POOL = [f"d{i}" for i in range(14)]
WORDS = ["cats", "rust", "tea"]
REPLICAS = 3
TIMEOUT_S = 60.0
# What the state machine runs into, over all its examples: the test asserts the rare paths were taken.
EVENTS: Counter[str] = Counter()


def seeded(seed: int) -> Vector:
    # Small seeds (what shrinking goes for) repeat vectors exactly, so exact-search ties happen.
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


@dataclass(frozen=True)
class Doc:
    label: int
    vector: Vector
    text: str | None


State = dict[str, Doc]  # a collection's documents as of one seq


class SmallBatchFeed(ChangeFeed):
    """Catch-up in batches of three rows: a follow takes several rounds of `more`."""

    def changes(self, collection_id: int, after: int, until: int | None = None, limit: int = 2000) -> Changes | None:
        return super().changes(collection_id, after, until, min(limit, 3))


class Node:
    """One replica: what a separate process holds (its engine, feed, open collections, index directory)."""

    def __init__(self, url: str, index_root: Path, *, small_batches: bool = False) -> None:
        self.url, self.index_root, self.small_batches = url, index_root, small_batches
        self.start()

    def start(self) -> None:
        self.engine = create_db_engine(self.url)
        self.store = Store(self.engine)
        self.feed = (SmallBatchFeed if self.small_batches else ChangeFeed)(self.engine)
        self.collections = OpenCollections(
            self.store, self.feed, self.index_root, reuse_slots_from=StorageSettings().rebuild_deleted_ratio
        )
        self.follower = Follower(self.collections, self.feed)
        self.replica_id = f"replica-{uuid.uuid4().hex[:8]}"

    def stop(self) -> None:
        self.collections.close()
        self.engine.dispose()

    def heartbeat(self) -> dict[int, int]:
        applied = {c.id: c.applied_seq for c in self.collections.all()}
        self.feed.heartbeat(self.replica_id, applied)
        return applied


def clear(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE collections, documents, tombstones, replica_progress CASCADE"))


def backdate(engine: Engine, replica_id: str) -> None:
    """The replica has been silent for twice the timeout."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE replica_progress SET heartbeat_at = heartbeat_at - make_interval(secs => :s) "
                "WHERE replica_id = :r"
            ),
            {"s": 2 * TIMEOUT_S, "r": replica_id},
        )


def create(store: Store, name: str, metric: str = "l2") -> int:
    return store.create_collection(
        name=name, embedding_model=None, dimension=DIM, metric=metric, hnsw=PARAMS, metadata={}
    ).id


def docs_of(pairs: dict[str, int], texts: dict[str, str] | None = None) -> list[NewDocument]:
    return [NewDocument(i, (texts or {}).get(i), {"seed": s}, seeded(s)) for i, s in pairs.items()]


def assert_holds(handle: OpenCollection, state: State, metric: str) -> None:
    """The open collection holds exactly `state`: every structure, every label, every vector."""
    where = f"{handle.name} at seq {handle.applied_seq}"
    assert handle.exact.count == handle.graph.live_count == handle.metadata.live_count == len(state), where
    alive = handle.metadata.alive()
    held = dict(zip(handle.metadata.ids_at(alive), handle.metadata.labels_at(alive).tolist(), strict=True))
    assert held == {doc_id: doc.label for doc_id, doc in state.items()}, where
    assert handle.keyword.document_count == sum(doc.text is not None for doc in state.values()), where
    for doc_id, doc in state.items():
        found, distances = handle.exact.search(doc.vector, 1)
        ties = {d.label for d in state.values() if np.array_equal(d.vector, doc.vector)}
        assert found[0] in ties, f"{where}: {doc_id} not found first"
        assert distances[0] <= 1e-5
    raw = handle.graph._index
    live = sorted(doc.label for doc in state.values())
    if live:
        vectors = np.stack([doc.vector for doc in sorted(state.values(), key=lambda d: d.label)]).astype(np.float64)
        if metric == "cosine":  # hnswlib keeps cosine vectors normalised
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        held = np.asarray(raw.get_items([handle.graph.hnsw_label(label) for label in live]), dtype=np.float64)
        np.testing.assert_allclose(held, vectors, rtol=1e-5, atol=1e-5)
    # Every other point is deleted: deleted documents, and the replaced points of live ones.
    for point in {int(x) for x in raw.get_ids_list()} - {handle.graph.hnsw_label(label) for label in live}:
        with pytest.raises(RuntimeError):  # hnswlib: "Label not found" for a label marked deleted
            raw.get_items([point])


@pytest.fixture(scope="module")
def migrated(postgres_url: str) -> str:
    engine = create_db_engine(postgres_url)
    migrate(engine)
    engine.dispose()
    return postgres_url


@pytest.fixture
def database(migrated: str) -> Iterator[tuple[str, Engine]]:
    """The module's database, emptied, and an engine of the test's own for setup and SQL checks."""
    engine = create_db_engine(migrated)
    clear(engine)
    yield migrated, engine
    engine.dispose()


# --- the state machine -------------------------------------------------------------------------------------

NODE = st.integers(0, REPLICAS - 1)
NAME = st.sampled_from(sorted(COLLECTIONS))


class ReplicaMachine(RuleBasedStateMachine):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="akidb-replicas-"))
        self.admin = create_db_engine(url)
        clear(self.admin)
        self.ids = {name: create(Store(self.admin), name, metric) for name, metric in COLLECTIONS.items()}
        # The third replica catches up in small batches.
        self.nodes = [Node(url, self.root / f"r{i}", small_batches=i == 2) for i in range(REPLICAS)]
        self.history: dict[str, dict[int, State]] = {name: {0: {}} for name in COLLECTIONS}
        self.last_seq = dict.fromkeys(COLLECTIONS, 0)
        self.next_label = dict.fromkeys(COLLECTIONS, 0)
        self.tombstones: dict[str, dict[int, int]] = {name: {} for name in COLLECTIONS}  # seq -> label
        self.purged_seq = dict.fromkeys(COLLECTIONS, 0)
        self.progress: dict[str, dict[int, int]] = {}  # replica id -> {collection id: applied seq}
        self.fresh: set[str] = set()  # replica ids whose heartbeat is recent
        self.seen: dict[tuple[int, str], int] = {}  # highest applied seq seen per node and collection
        self.checkpoints: dict[tuple[int, str], int] = {}  # newest readable checkpoint per node and collection

    @initialize()
    def open_everywhere(self) -> None:
        """Every replica serves both collections from the start, so that each one falls behind every write."""
        for replica in self.nodes:
            for name in COLLECTIONS:
                handle = replica.collections.find(name)
                assert handle.applied_seq == 0
                assert_holds(handle, {}, COLLECTIONS[name])

    def teardown(self) -> None:
        for node in self.nodes:
            node.stop()
        self.admin.dispose()
        shutil.rmtree(self.root, ignore_errors=True)

    def current(self, name: str) -> State:
        return self.history[name][self.last_seq[name]]

    def _record(self, name: str, seq: int, state: State) -> None:
        assert seq > self.last_seq[name], "seq numbers of a collection must strictly increase"
        self.history[name][seq] = state
        self.last_seq[name] = seq

    def _after_write(self, node: int, handle: OpenCollection, was_stale: bool) -> None:
        """A write through a replica that is behind applies what came before it first, then itself; one
        whose deletions were purged meanwhile only commits (the reopen brings both)."""
        name = handle.name
        if handle.stale:
            EVENTS["write through a stale replica"] += 1
            event("write through a stale replica")
            assert handle.applied_seq < self.purged_seq[name], "stale, yet every tombstone it needs is there"
            assert handle.applied_seq >= self.seen.get((node, name), 0)
        else:
            assert not was_stale
            assert handle.applied_seq == self.last_seq[name]
            assert_holds(handle, self.current(name), COLLECTIONS[name])

    # --- rules ------------------------------------------------------------------------------------------

    @rule(node=NODE, name=NAME, data=st.data())
    def upsert(self, node: int, name: str, data: st.DataObject) -> None:
        current = self.current(name)
        replaced = data.draw(st.lists(st.sampled_from(sorted(current)), max_size=4, unique=True)) if current else []
        more = data.draw(st.lists(st.sampled_from(ID_POOL), min_size=0 if replaced else 1, max_size=5, unique=True))
        ids = list(dict.fromkeys(replaced + more))
        seeds = data.draw(st.lists(st.integers(0, 40), min_size=len(ids), max_size=len(ids)), label="seeds")
        texts = {i: data.draw(st.sampled_from(WORDS), label=i) for i in ids if data.draw(st.booleans(), label=i)}
        handle = self.nodes[node].collections.find(name)
        was_stale = handle.stale

        outcome = handle.upsert(self.nodes[node].store, docs_of(dict(zip(ids, seeds, strict=True)), texts))

        assert outcome.base_seq == self.last_seq[name]
        assert outcome.last_seq == outcome.base_seq + len(ids)
        assert outcome.is_new == [i not in current for i in ids]
        state = dict(current)
        for doc_id, seed, label in zip(ids, seeds, outcome.labels, strict=True):
            if doc_id in current:
                assert label == current[doc_id].label, "a replaced document keeps its label"
            else:
                assert label == self.next_label[name], "labels are handed out in order, never reused"
                self.next_label[name] += 1
            state[doc_id] = Doc(label, seeded(seed), texts.get(doc_id))
        self._record(name, outcome.last_seq, state)
        self._after_write(node, handle, was_stale)

    @rule(node=NODE, name=NAME, data=st.data())
    def delete(self, node: int, name: str, data: st.DataObject) -> None:
        current = self.current(name)
        ids = data.draw(
            st.lists(st.sampled_from(sorted(current) or ID_POOL), min_size=1, max_size=5, unique=True), label="ids"
        )
        ids += data.draw(st.lists(st.sampled_from([*ID_POOL, "never"]), max_size=2), label="maybe missing")
        handle = self.nodes[node].collections.find(name)
        was_stale = handle.stale

        outcome = handle.delete(self.nodes[node].store, lambda: ids)

        doomed = {i for i in ids if i in current}
        assert sorted(outcome.labels) == sorted(current[i].label for i in doomed)
        assert outcome.base_seq == self.last_seq[name]
        assert outcome.last_seq == outcome.base_seq + len(doomed)  # a delete of nothing takes no seq
        for offset, label in enumerate(outcome.labels, start=1):
            self.tombstones[name][outcome.base_seq + offset] = label
        if doomed:
            self._record(name, outcome.last_seq, {i: doc for i, doc in current.items() if i not in doomed})
        self._after_write(node, handle, was_stale)

    @rule(node=NODE)
    def follow(self, node: int) -> None:
        collections = self.nodes[node].collections
        reopen: set[str] = set()
        for name in COLLECTIONS:
            try:
                handle = collections.get(name)
            except NotFound:
                reopen.add(name)
                continue
            if handle.stale or self.purged_seq[name] > handle.applied_seq:
                reopen.add(name)  # deletions it never applied are purged: it must reopen from the rows
                EVENTS["stale reopen"] += 1
                event("stale reopen")

        report = self.nodes[node].follower.follow()

        assert report.complete
        assert report.dropped == []
        assert set(report.opened) == reopen
        for name in COLLECTIONS:
            handle = collections.get(name)
            assert not handle.stale
            assert not handle.dropped
            assert handle.applied_seq == self.last_seq[name]
            assert_holds(handle, self.current(name), COLLECTIONS[name])

    @rule(node=NODE)
    def heartbeat(self, node: int) -> None:
        """What Replica.heartbeat does: record this replica's progress, then purge what every live one applied."""
        replica = self.nodes[node]
        self.progress[replica.replica_id] = replica.heartbeat()
        self.fresh.add(replica.replica_id)
        self._purge(replica.feed)

    def _purge(self, feed: ChangeFeed) -> None:
        purged = feed.purge_tombstones(timeout_s=TIMEOUT_S)
        with self.admin.connect() as conn:
            now = {r.name: r.purged_seq for r in conn.execute(text("SELECT name, purged_seq FROM collections"))}
        for replica_id in set(self.progress) - self.fresh:
            del self.progress[replica_id]  # silent for longer than the timeout: forgotten
        expected = 0
        for name, collection_id in self.ids.items():
            floors = [applied[collection_id] for applied in self.progress.values() if collection_id in applied]
            # No live replica holds it: nothing is known to be applied, nothing goes.
            gone = [seq for seq in self.tombstones[name] if floors and seq <= min(floors)]
            for seq in gone:
                del self.tombstones[name][seq]
            if gone:
                # It covers every purged tombstone (a replica behind one must reopen), and no more than every
                # live replica has applied.
                assert max(gone) <= now[name] <= max(self.purged_seq[name], min(floors))
                EVENTS["purged"] += 1
            else:
                assert now[name] == self.purged_seq[name]
            self.purged_seq[name] = now[name]
            expected += len(gone)
        assert purged == expected

    @rule(node=NODE, others_follow=st.booleans())
    def pause(self, node: int, others_follow: bool) -> None:
        """The replica falls silent for longer than the timeout (and so do the ids that crashed processes left
        behind), while the others (maybe after following) heartbeat and purge: deletions it has not applied go."""
        paused = self.nodes[node].replica_id
        for replica_id in sorted(self.fresh - {r.replica_id for r in self.nodes} | {paused}):
            backdate(self.admin, replica_id)
            self.fresh.discard(replica_id)
        others = [replica for replica in self.nodes if replica.replica_id != paused]
        for replica in others:
            if others_follow:
                self.follow(self.nodes.index(replica))
            self.progress[replica.replica_id] = replica.heartbeat()
            self.fresh.add(replica.replica_id)
        self._purge(others[0].feed)

    @rule(node=NODE, name=NAME, write=st.booleans(), data=st.data())
    def fall_behind(self, node: int, name: str, write: bool, data: st.DataObject) -> None:
        """The story the rules above tell by chance, in one step: another replica deletes, this one falls silent
        while the others follow, heartbeat and purge, then it writes (maybe) and follows: it reopens and converges."""
        other = (node + data.draw(st.integers(1, REPLICAS - 1), label="other")) % REPLICAS
        if not self.current(name):
            self.upsert(other, name, data)
        self.delete(other, name, data)
        self.pause(node, others_follow=True)
        assert self.purged_seq[name] == self.last_seq[name]
        if write:
            self.upsert(node, name, data)
        self.follow(node)

    @rule(node=NODE, save=st.booleans(), clean=st.booleans(), damage=st.booleans())
    def restart(self, node: int, save: bool, clean: bool, damage: bool) -> None:
        """A new process on the replica's index directory: after a checkpoint or not, a clean stop (its
        progress rows removed) or a crash (they stay until they time out), the checkpoints maybe damaged."""
        replica = self.nodes[node]
        if save:
            replica.collections.save_all()
            for handle in replica.collections.all():
                assert not handle.graph.dirty
                names = sorted(p.name for p in handle.index_dir.glob("hnsw-*.bin"))
                assert names == [f"hnsw-{handle.applied_seq:020d}.bin"]
                self.checkpoints[(node, handle.name)] = handle.applied_seq
        if clean:
            replica.feed.forget(replica.replica_id)
            self.progress.pop(replica.replica_id, None)
            self.fresh.discard(replica.replica_id)
        replica.stop()
        if damage:
            for path in replica.index_root.glob("*/hnsw-*.bin"):
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
            self.checkpoints = {key: seq for key, seq in self.checkpoints.items() if key[0] != node}
        replica.start()
        replica.collections.open_all()
        for name in COLLECTIONS:
            handle = replica.collections.get(name)
            assert handle.applied_seq == self.last_seq[name]
            assert handle.graph.saved_seq == self.checkpoints.get((node, name), -1), "the newest checkpoint"
            assert_holds(handle, self.current(name), COLLECTIONS[name])
            self.seen[(node, name)] = handle.applied_seq
        EVENTS["restart from a checkpoint" if save and not damage else "restart"] += 1

    # --- invariants -------------------------------------------------------------------------------------

    @invariant()
    def every_replica_holds_a_prefix(self) -> None:
        """Whatever it has applied, a replica holds exactly the database as of that seq."""
        for node, replica in enumerate(self.nodes):
            for handle in replica.collections.all():
                name, applied = handle.name, handle.applied_seq
                assert applied <= self.last_seq[name]
                assert applied >= self.seen.get((node, name), 0), "applied_seq went back"
                self.seen[(node, name)] = applied
                if handle.stale:
                    assert self.purged_seq[name] > applied
                    continue
                assert applied in self.history[name], f"{name}: applied {applied}, in the middle of a write"
                assert_holds(handle, self.history[name][applied], COLLECTIONS[name])

    @invariant()
    def the_database_matches_the_model(self) -> None:
        with self.admin.connect() as conn:
            heads = {r.name: (r.last_seq, r.purged_seq) for r in conn.execute(text("SELECT * FROM collections"))}
            rows = conn.execute(text("SELECT collection_id, id, label FROM documents")).all()
            tombstones = conn.execute(text("SELECT collection_id, seq, label FROM tombstones")).all()
        assert heads == {name: (self.last_seq[name], self.purged_seq[name]) for name in COLLECTIONS}
        names = {collection_id: name for name, collection_id in self.ids.items()}
        assert {(names[c], i, label) for c, i, label in rows} == {
            (name, i, doc.label) for name in COLLECTIONS for i, doc in self.current(name).items()
        }
        assert {(names[c], seq, label) for c, seq, label in tombstones} == {
            (name, seq, label) for name in COLLECTIONS for seq, label in self.tombstones[name].items()
        }
        progress = {(r, c): seq for r, c, seq, _ in self.nodes[0].feed.progress()}
        assert progress == {(r, c): seq for r, applied in self.progress.items() for c, seq in applied.items()}


SETTINGS = settings(
    max_examples=30,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def test_replicas_converge_and_never_lose_or_resurrect_documents(database: tuple[str, Engine]) -> None:
    EVENTS.clear()
    url, _ = database
    run_state_machine_as_test(lambda: ReplicaMachine(url), settings=SETTINGS)
    # The paths that matter most were taken, not just the easy ones.
    for name in ("stale reopen", "write through a stale replica", "purged", "restart from a checkpoint", "restart"):
        assert EVENTS[name] > 0, f"never happened: {name} ({dict(EVENTS)})"


# --- plain tests ---------------------------------------------------------------------------------------------


def test_changes_come_in_batches_of_at_most_limit_rows_in_seq_order(database: tuple[str, Engine]) -> None:
    _, engine = database
    store, feed = Store(engine), ChangeFeed(engine)
    cid = create(store, "batches")
    # Ten writes; labels a0 b1 c2 d3 e4 f5 g6.
    writes: list[Any] = [
        ("up", "a"), ("up", "b"), ("up", "c"), ("del", "a"), ("up", "d"),
        ("up", "e"), ("up", "f"), ("up", "g"), ("up", "c"), ("del", "e"),
    ]  # fmt: skip
    for seq, (kind, doc_id) in enumerate(writes, start=1):
        if kind == "up":
            assert store.upsert_documents(cid, docs_of({doc_id: seq})).last_seq == seq
        else:
            assert store.delete_documents(cid, [doc_id]).last_seq == seq
    live = {"b": 2, "d": 5, "f": 7, "g": 8, "c": 9}  # id -> seq of its row
    tombstones = {4: 0, 10: 4}  # seq -> label

    batches: list[Changes] = []
    after = 0
    while True:
        changes = feed.changes(cid, after, limit=3)
        assert changes is not None
        batches.append(changes)
        assert len(changes.rows) <= 3
        assert [r.seq for r in changes.rows] == sorted(r.seq for r in changes.rows)
        assert all(after < r.seq <= changes.until for r in changes.rows)
        assert sorted(changes.tombstones) == sorted(lab for s, lab in tombstones.items() if after < s <= changes.until)
        if changes.more:  # lowered to its last row
            assert len(changes.rows) == 3
            assert changes.until == changes.rows[-1].seq < 10
        if not changes.more:
            break
        after = changes.until
        assert len(batches) < 10
    assert [(b.until, b.more) for b in batches] == [(7, True), (10, False)]
    assert [[r.id for r in b.rows] for b in batches] == [["b", "d", "f"], ["g", "c"]]
    assert [b.tombstones for b in batches] == [[0], [4]]
    assert {r.id: r.seq for b in batches for r in b.rows} == live
    assert all(b.purged_seq == 0 for b in batches)

    # Exactly `limit` rows up to `until`: nothing more to fetch.
    capped = feed.changes(cid, 0, until=7, limit=3)
    assert capped is not None
    assert (capped.until, capped.more, [r.seq for r in capped.rows]) == (7, False, [2, 5, 7])
    # Exactly `limit` rows left but a tombstone after them: one more call fetches it.
    tail = feed.changes(cid, 5, limit=3)
    assert tail is not None
    assert (tail.until, tail.more, [r.seq for r in tail.rows], tail.tombstones) == (9, True, [7, 8, 9], [])
    last = feed.changes(cid, 9, limit=3)
    assert last is not None
    assert (last.until, last.more, last.rows, last.tombstones) == (10, False, [], [4])
    # Nothing after the head; a deleted collection has no changes.
    nothing = feed.changes(cid, 10, limit=3)
    assert nothing is not None
    assert (nothing.until, nothing.more, nothing.rows, nothing.tombstones) == (10, False, [], [])
    store.delete_collection("batches")
    assert feed.changes(cid, 0) is None


def test_purge_keeps_what_a_live_replica_has_not_applied(database: tuple[str, Engine]) -> None:
    _, engine = database
    store, feed = Store(engine), ChangeFeed(engine)
    cid = create(store, "purge")
    other = create(store, "other")
    store.upsert_documents(cid, docs_of({f"d{i}": i for i in range(6)}))  # seq 1-6
    for doc_id in ("d0", "d1", "d2"):  # seq 7, 8, 9
        store.delete_documents(cid, [doc_id])
    store.upsert_documents(other, docs_of({"x": 1}))
    store.delete_documents(other, ["x"])  # other: a tombstone at seq 2, which nobody has applied

    def state() -> tuple[list[int], int, list[int]]:
        with engine.connect() as conn:
            seqs = conn.execute(text("SELECT seq FROM tombstones WHERE collection_id = :c ORDER BY seq"), {"c": cid})
            purged = conn.execute(text("SELECT purged_seq FROM collections WHERE id = :c"), {"c": cid})
            others = conn.execute(text("SELECT seq FROM tombstones WHERE collection_id = :c"), {"c": other})
            return list(seqs.scalars()), int(purged.scalar_one()), list(others.scalars())

    feed.heartbeat("ahead", {cid: 9})
    feed.heartbeat("behind", {cid: 7})
    assert feed.purge_tombstones(timeout_s=TIMEOUT_S) == 1
    assert state() == ([8, 9], 7, [2])
    assert feed.purge_tombstones(timeout_s=TIMEOUT_S) == 0  # nothing new applied: nothing goes
    assert state() == ([8, 9], 7, [2])

    feed.heartbeat("behind", {cid: 8})
    assert feed.purge_tombstones(timeout_s=TIMEOUT_S) == 1
    assert state() == ([9], 8, [2])

    # "behind" falls silent for longer than the timeout: it is forgotten and holds nothing back.
    backdate(engine, "behind")
    assert feed.purge_tombstones(timeout_s=TIMEOUT_S) == 1
    assert state() == ([], 9, [2])
    assert [(r, c, s) for r, c, s, _ in feed.progress()] == [("ahead", cid, 9)]
    # A heartbeat that leaves a collection out drops its progress row; a replica that stops cleanly
    # is forgotten at once.
    feed.heartbeat("ahead", {other: 2})
    assert [(r, c, s) for r, c, s, _ in feed.progress()] == [("ahead", other, 2)]
    assert feed.purge_tombstones(timeout_s=TIMEOUT_S) == 1
    assert state() == ([], 9, [])
    feed.forget("ahead")
    assert feed.progress() == []


def test_a_paused_replica_that_writes_reopens_and_converges(database: tuple[str, Engine], tmp_path: Path) -> None:
    """Tombstones it never applied are purged while it is silent: its write commits, then its next follow
    reopens the collection from the rows, with neither its write lost nor the deleted document back."""
    url, engine = database
    a, b = Node(url, tmp_path / "a"), Node(url, tmp_path / "b")
    try:
        create(a.store, "c")
        ca = a.collections.find("c")
        ca.upsert(a.store, docs_of({f"d{i}": i for i in range(5)}))  # seq 1-5
        cb = b.collections.find("c")
        assert cb.applied_seq == 5
        old_d1 = a.store.get_document(ca.id, "d1", with_vector=False).label
        ca.delete(a.store, lambda: ["d1"])  # seq 6
        ca.upsert(a.store, docs_of({"d5": 5}))  # seq 7
        a.heartbeat()
        b.heartbeat()
        assert a.feed.purge_tombstones(timeout_s=TIMEOUT_S) == 0  # b has not applied seq 6
        backdate(engine, b.replica_id)
        assert a.feed.purge_tombstones(timeout_s=TIMEOUT_S) == 1

        outcome = cb.upsert(b.store, docs_of({"d1": 11, "d2": 12}))  # d1 again, d2 replaced
        assert (outcome.base_seq, outcome.last_seq, outcome.is_new) == (7, 9, [True, False])
        assert cb.stale  # committed, not applied here
        assert cb.applied_seq == 5
        report = b.follower.follow()
        assert report.complete
        assert report.opened == ["c"]
        assert cb.dropped
        for replica in (a, b):
            replica.follower.follow()
            handle = replica.collections.get("c")
            assert handle.applied_seq == 9
            labels = {i: replica.store.get_document(handle.id, i, with_vector=False).label for i in ID_POOL[:6]}
            state = {i: Doc(labels[i], seeded({"d1": 11, "d2": 12}.get(i, int(i[1:]))), None) for i in labels}
            assert labels["d1"] != old_d1
            assert_holds(handle, state, "l2")
            assert old_d1 not in handle.exact.search(seeded(1), 10)[0]
    finally:
        a.stop()
        b.stop()


def test_purging_tombstones_a_replica_never_needed_does_not_make_it_stale(
    database: tuple[str, Engine], tmp_path: Path
) -> None:
    url, _ = database
    a, b = Node(url, tmp_path / "a"), Node(url, tmp_path / "b")
    try:
        create(a.store, "c")
        ca = a.collections.find("c")
        ca.upsert(a.store, docs_of({"d0": 0, "d1": 1, "d2": 2}))  # seq 1-3
        ca.delete(a.store, lambda: ["d0"])  # seq 4
        cb = b.collections.find("c")  # a new process opens at seq 4: it needs no tombstone up to there
        ca.upsert(a.store, docs_of({"d3": 3}))  # seq 5; no deletion after seq 4
        a.heartbeat()
        assert a.feed.purge_tombstones(timeout_s=TIMEOUT_S) == 1  # the tombstone at seq 4
        report = b.follower.follow()
        assert report.opened == []  # a catch-up of one row, not a reopen from every row
        assert cb.applied_seq == 5
    finally:
        a.stop()
        b.stop()


def test_a_write_applies_exactly_the_prefix_before_it(database: tuple[str, Engine], tmp_path: Path) -> None:
    """Another process commits between this process's commit and its apply (a race of two processes):
    this replica must still hold the database as of its applied_seq."""
    url, _ = database
    a, b = Node(url, tmp_path / "a"), Node(url, tmp_path / "b")
    try:
        create(a.store, "c")
        cb = b.collections.find("c")
        a.collections.find("c").upsert(a.store, docs_of({"x": 1}))  # seq 1: b has not applied it

        class Interleaved(Store):
            def upsert_documents(self, collection_id: int, documents: Any, **options: Any) -> Any:
                outcome = super().upsert_documents(collection_id, documents, **options)
                a.store.upsert_documents(collection_id, docs_of({"x": 3}))  # seq 3: a replaces x
                return outcome

        outcome = cb.upsert(Interleaved(b.engine), docs_of({"y": 2}))  # seq 2
        assert (outcome.base_seq, outcome.last_seq, cb.applied_seq) == (1, 2, 2)
        # At seq 2 the database held x (its seq-1 version) and y.
        assert sorted(cb.metadata.ids_at(cb.metadata.alive())) == ["x", "y"]
    finally:
        a.stop()
        b.stop()

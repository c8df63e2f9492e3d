"""Several `akidb serve` processes on one PostgreSQL database (API.md, "Replicas and consistency").

Each process keeps its own indexes and follows the database: a write on one is found on another with
`min_seq` at once, and without it within the follow interval; collections created or deleted on one appear
and disappear on the others. The module runs A and B from the start and C from the test that starts a
process late; the later tests write through all three at once, kill -9 one of them in the middle of writes,
and then check every process against the database itself (its rows, read with SQL): the same count, the
database's seq applied, every document found first by its own vector, and /metrics agreeing.

Two cases need care in the implementation: a delete on B of a document just written on A must delete it
(B must not choose the ids from a metadata mirror that has not caught up), and a read with min_seq on A of a
collection deleted and made again on B must be answered from the new collection, even while A still holds
the old one open (seqs restart with the new one, so the old one's applied_seq says nothing).

Searches go through the HNSW graph (storage.exact_search_max_vectors = 0), the structure that following has
to keep right; graph checkpoints are written every second, so a restarted process replays from one.
"""

from __future__ import annotations

import re
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy
from sqlalchemy import text

from tests.e2e.conftest import AkidbServer

pytestmark = pytest.mark.e2e

DIMENSION = 8
FOLLOW_INTERVAL_MS = 200
# A write is visible elsewhere within the follow interval plus the time to index it; generous for CI.
VISIBLE_WITHIN_S = 5.0
# Pool of ids the concurrent writers draw from, so that many writes replace or delete an existing document.
ID_POOL = 120
# Search wide enough that a self-query through the graph finds its own vector whatever the graph's shape.
EF_SEARCH = 200

# Ack-to-visible delays without min_seq, every probe of the module: printed (run with -s) and summarised.
VISIBILITY_DELAYS_S: list[float] = []


def replica_config(postgres_url: str) -> str:
    return (
        "[storage]\n"
        f'url = "{postgres_url}"\n'
        f"follow_interval_ms = {FOLLOW_INTERVAL_MS}\n"
        "index_save_interval_s = 1.0\n"
        "exact_search_max_vectors = 0\n\n"
        '[embedding]\nprovider = "mock"\n'
    )


@dataclass
class Cluster:
    a: AkidbServer
    b: AkidbServer
    c: AkidbServer
    db: sqlalchemy.Engine

    def running(self) -> list[AkidbServer]:
        return [server for server in (self.a, self.b, self.c) if server.running]

    def three(self) -> tuple[AkidbServer, AkidbServer, AkidbServer]:
        """A, B and C, starting C if no test has yet (a test run on its own)."""
        if not self.c.running:
            self.c.start()
        return self.a, self.b, self.c


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[Cluster]:
    config = replica_config(postgres_url)
    servers = [AkidbServer(tmp_path_factory.mktemp(f"akidb-replica-{n}"), config=config) for n in "abc"]
    db = sqlalchemy.create_engine(postgres_url)
    try:
        # One after the other: each migrates the shared database at start-up. C starts later, in a test.
        servers[0].start()
        servers[1].start()
        yield Cluster(a=servers[0], b=servers[1], c=servers[2], db=db)
    finally:
        for server in servers:
            server.close()
        db.dispose()
        if VISIBILITY_DELAYS_S:
            print(f"\nvisibility without min_seq: {delay_summary(VISIBILITY_DELAYS_S)}")


# --- helpers ---------------------------------------------------------------------------------------------


def name_of(server: AkidbServer) -> str:
    return server.root.name


def vectors(n: int, seed: int) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    return [[float(x) for x in row] for row in rng.standard_normal((n, DIMENSION)).astype(np.float32)]


def create(server: AkidbServer, name: str) -> dict[str, Any]:
    response = server.client.post(
        "/api/v1/collections", json={"name": name, "embedding_model": None, "dimension": DIMENSION}
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def upsert(server: AkidbServer, name: str, docs: list[dict[str, Any]]) -> dict[str, Any]:
    response = server.client.post(f"/api/v1/collections/{name}/upsert", json={"documents": docs})
    assert response.status_code == 200, response.text
    return dict(response.json())


def search(server: AkidbServer, name: str, vector: list[float], top_k: int = 3, **extra: Any) -> list[dict[str, Any]]:
    response = server.client.post(
        f"/api/v1/collections/{name}/search",
        json={"vector": vector, "top_k": top_k, "ef_search": EF_SEARCH, **extra},
    )
    assert response.status_code == 200, f"{name_of(server)}: {response.text}"
    return list(response.json()["results"])


def search_ids(server: AkidbServer, name: str, vector: list[float], **extra: Any) -> list[str]:
    return [hit["id"] for hit in search(server, name, vector, **extra)]


def count(server: AkidbServer, name: str, **extra: Any) -> int:
    response = server.client.post(f"/api/v1/collections/{name}/count", json=extra)
    assert response.status_code == 200, f"{name_of(server)}: {response.text}"
    return int(response.json()["count"])


def info(server: AkidbServer, name: str) -> dict[str, Any]:
    response = server.client.get(f"/api/v1/collections/{name}")
    assert response.status_code == 200, f"{name_of(server)}: {response.text}"
    return dict(response.json())


def wait_until(check: Callable[[], bool], timeout_s: float = VISIBLE_WITHIN_S, what: str = "") -> float:
    """Seconds until `check` held; fails the test past `timeout_s`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"not true within {timeout_s} s: {what or check}")
        time.sleep(0.01)
    return time.monotonic() - start


def delay_summary(delays: list[float]) -> str:
    ms = sorted(d * 1000 for d in delays)
    return f"{len(ms)} probes, p50 {statistics.median(ms):.0f} ms, max {ms[-1]:.0f} ms"


def probe(writer: AkidbServer, reader: AkidbServer, name: str, seed: int, *, with_min_seq: bool) -> float:
    """Write one document on `writer`; the seconds until `reader` finds it first by its vector. With
    min_seq, the first search must find it; without, it must within VISIBLE_WITHIN_S."""
    vector = vectors(1, seed)[0]
    doc_id = f"probe-{seed}"
    written = upsert(writer, name, [{"id": doc_id, "vector": vector}])
    acked = time.monotonic()
    if with_min_seq:
        found = search_ids(reader, name, vector, min_seq=written["seq"])
        assert found[:1] == [doc_id], f"{name_of(reader)} with min_seq {written['seq']}: {found}"
        return time.monotonic() - acked
    wait_until(
        lambda: search_ids(reader, name, vector)[:1] == [doc_id],
        what=f"{doc_id} written on {name_of(writer)} found on {name_of(reader)}",
    )
    delay = time.monotonic() - acked
    VISIBILITY_DELAYS_S.append(delay)
    return delay


# --- the database itself -------------------------------------------------------------------------------


@dataclass
class DbState:
    last_seq: int
    docs: dict[str, list[float]]


def db_state(db: sqlalchemy.Engine, name: str) -> DbState:
    with db.connect() as conn:
        conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        last_seq = conn.execute(text("SELECT last_seq FROM collections WHERE name = :n"), {"n": name}).scalar_one()
        rows = conn.execute(
            text(
                "SELECT d.id, d.vector FROM documents d JOIN collections c ON c.id = d.collection_id WHERE c.name = :n"
            ),
            {"n": name},
        ).all()
    docs = {row.id: [float(x) for x in np.frombuffer(row.vector, dtype="<f4")] for row in rows}
    return DbState(last_seq=int(last_seq), docs=docs)


def db_heads(db: sqlalchemy.Engine) -> dict[str, tuple[int, int]]:
    """Every collection: (last_seq, rows in documents)."""
    with db.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.name, c.last_seq, count(d.id) AS n FROM collections c"
                " LEFT JOIN documents d ON d.collection_id = c.id GROUP BY c.name, c.last_seq"
            )
        ).all()
    return {row.name: (int(row.last_seq), int(row.n)) for row in rows}


# --- metrics -------------------------------------------------------------------------------------------


def scrape(server: AkidbServer) -> str:
    response = server.client.get("/metrics")
    assert response.status_code == 200, response.text
    return response.text


def metric(body: str, name: str, labels: str = "") -> float | None:
    selector = re.escape(name) + (re.escape("{" + labels + "}") if labels else "")
    found = re.search(rf"^{selector} (\S+)$", body, re.MULTILINE)
    return None if found is None else float(found.group(1))


def assert_metrics_agree(server: AkidbServer, name: str, applied_seq: int) -> None:
    """akidb_replica_applied_seq{collection=name} equals the applied_seq GET collection shows (the gauge is
    published every follow round, so it may trail by one round), and the lag is a few seconds at most."""
    label = f'collection="{name}"'
    bodies: list[str] = []

    def agrees() -> bool:
        bodies.append(scrape(server))
        return metric(bodies[-1], "akidb_replica_applied_seq", label) == applied_seq

    wait_until(agrees, what=f"{name_of(server)} akidb_replica_applied_seq{{{label}}} == {applied_seq}")
    lag = metric(bodies[-1], "akidb_replica_lag_seconds")
    assert lag is not None, bodies[-1]
    assert 0 <= lag < 5, f"{name_of(server)}: akidb_replica_lag_seconds {lag}"


# --- every process holds exactly the database's rows ---------------------------------------------------


def assert_holds_database(
    servers: list[AkidbServer], db: sqlalchemy.Engine, name: str, *, sample: int | None = None
) -> DbState:
    """With writes stopped: every server, once it has applied the database's seq, counts the database's rows,
    finds each document (or a sample) first by its own vector at distance 0, returns no id the database
    lacks, and its metrics agree."""
    state = db_state(db, name)
    assert state.docs, f"collection {name} is empty in the database"
    for server in servers:
        assert count(server, name, min_seq=state.last_seq) == len(state.docs), name_of(server)
        shown = info(server, name)
        assert (shown["seq"], shown["applied_seq"], shown["document_count"]) == (
            state.last_seq,
            state.last_seq,
            len(state.docs),
        ), f"{name_of(server)}: {shown}"
    ids = sorted(state.docs)
    if sample is not None and sample < len(ids):
        ids = sorted(np.random.default_rng(len(ids)).choice(ids, size=sample, replace=False))
    for server in servers:
        misses = []
        for doc_id in ids:
            hits = search(server, name, state.docs[doc_id])
            if not hits or hits[0]["id"] != doc_id or hits[0]["distance"] > 1e-4:
                misses.append((doc_id, [(h["id"], round(h["distance"], 6)) for h in hits]))
        assert not misses, f"{name_of(server)}: {len(misses)} of {len(ids)} not found first: {misses[:5]}"
        # No label the database lacks is left live in the graph: a search as wide as the collection comes
        # back full (a ghost would be ranked, then dropped when its row is not found), without duplicates.
        top_k = min(1000, len(state.docs))
        returned = [hit["id"] for hit in search(server, name, vectors(1, seed=len(ids))[0], top_k=top_k)]
        assert len(returned) == top_k, f"{name_of(server)}: {len(returned)} hits for top_k {top_k}"
        assert len(set(returned)) == top_k, f"{name_of(server)}: duplicate hits"
        assert set(returned) <= set(state.docs), f"{name_of(server)}: ghosts {set(returned) - set(state.docs)}"
    for server in servers:
        assert_metrics_agree(server, name, state.last_seq)
    return state


# --- concurrent writers ----------------------------------------------------------------------------------


@dataclass
class Writer:
    """A thread writing through one server with its own client: upserts of 1-4 documents with fresh vectors
    (ids from a small pool, so many replace), deletes by POST .../delete and by DELETE route."""

    server: AkidbServer
    collection: str
    seed: int
    stop: threading.Event
    stop_on_transport_error: bool = False
    seqs: list[int] = field(default_factory=list)  # seqs of writes that changed something
    acked_at: list[float] = field(default_factory=list)  # monotonic time of each of them
    replaced: int = 0  # documents an upsert replaced
    deleted: int = 0
    failures: list[str] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)
    thread: threading.Thread | None = None

    def start(self) -> Writer:
        self.thread = threading.Thread(target=self._run, name=f"writer-{name_of(self.server)}", daemon=True)
        self.thread.start()
        return self

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), f"writer on {name_of(self.server)} did not stop"

    def _acked(self, seq: int) -> None:
        self.seqs.append(seq)
        self.acked_at.append(time.monotonic())

    def _run(self) -> None:
        rng = np.random.default_rng(self.seed)
        route = f"/api/v1/collections/{self.collection}"
        with httpx.Client(base_url=self.server.base_url, timeout=30.0) as client:
            while not self.stop.is_set():
                op = rng.random()
                ids = [f"k{int(i)}" for i in rng.choice(ID_POOL, size=int(rng.integers(1, 5)), replace=False)]
                try:
                    if op < 0.65:
                        vecs = rng.standard_normal((len(ids), DIMENSION)).astype(np.float32)
                        docs = [{"id": i, "vector": [float(x) for x in v]} for i, v in zip(ids, vecs, strict=True)]
                        response = client.post(f"{route}/upsert", json={"documents": docs})
                        if response.status_code == 200:
                            self._acked(response.json()["seq"])
                            self.replaced += response.json()["updated"]
                            continue
                    elif op < 0.85:
                        response = client.post(f"{route}/delete", json={"ids": ids[:2]})
                        if response.status_code == 200:
                            if response.json()["deleted"]:
                                self._acked(response.json()["seq"])
                                self.deleted += response.json()["deleted"]
                            continue
                    else:
                        response = client.delete(f"{route}/documents/{ids[0]}")
                        if response.status_code == 204:
                            self._acked(int(response.headers["x-akidb-seq"]))
                            self.deleted += 1
                            continue
                        if response.status_code == 404:
                            continue
                    self.failures.append(
                        f"{response.request.method} {response.request.url.path}: "
                        f"{response.status_code} {response.text[:300]}"
                    )
                except httpx.TransportError as exc:
                    self.transport_errors.append(f"{type(exc).__name__}: {exc}")
                    if self.stop_on_transport_error:
                        return
                    time.sleep(0.05)


def run_writers(writers: list[Writer], seconds: float) -> None:
    for writer in writers:
        writer.start()
    time.sleep(seconds)  # the length of the workload, not an assertion
    writers[0].stop.set()
    for writer in writers:
        writer.join()


def assert_writes_sane(writers: list[Writer], db: sqlalchemy.Engine, name: str) -> None:
    for writer in writers:
        assert not writer.failures, f"{name_of(writer.server)}: {writer.failures[:5]}"
        assert writer.seqs, f"no write went through {name_of(writer.server)}"
    seqs = [seq for writer in writers for seq in writer.seqs]
    # Every acknowledged write got its own seq range, whichever process took it.
    assert len(seqs) == len(set(seqs)), "two acknowledged writes share a seq"
    assert max(seqs) <= db_state(db, name).last_seq
    # The workload did replace and delete existing documents, not only insert.
    assert sum(writer.replaced for writer in writers) > 0
    assert sum(writer.deleted for writer in writers) > 0


# --- tests -------------------------------------------------------------------------------------------------


def test_write_on_a_is_read_on_b_with_min_seq_at_once_and_without_it_soon(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    created = create(a, "rw")
    assert created["seq"] == 0
    vecs = vectors(3, seed=1)
    written = upsert(a, "rw", [{"id": f"d{i}", "vector": v} for i, v in enumerate(vecs)])
    assert written["seq"] == 3

    # B has never seen the collection: min_seq makes it open and catch up before answering.
    assert search_ids(b, "rw", vecs[2], min_seq=written["seq"])[0] == "d2"
    shown = info(b, "rw")
    assert (shown["seq"], shown["applied_seq"]) == (3, 3)

    # Both ways: with min_seq, found by the first read; without it, within the follow interval (measured).
    delays = []
    for seed in range(100, 106):
        assert probe(a, b, "rw", seed, with_min_seq=True) < VISIBLE_WITHIN_S
        assert probe(b, a, "rw", seed + 50, with_min_seq=True) < VISIBLE_WITHIN_S
        delays.append(probe(a, b, "rw", seed + 100, with_min_seq=False))
        delays.append(probe(b, a, "rw", seed + 150, with_min_seq=False))
    print(f"\nA<->B visibility without min_seq: {delay_summary(delays)}")

    # Deleted on B (both routes): gone on A once it has applied the delete's seq.
    before = count(a, "rw")
    deleted = b.client.post("/api/v1/collections/rw/delete", json={"ids": ["d2"]})
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["deleted"] == 1
    removed = b.client.delete("/api/v1/collections/rw/documents/d1")
    assert removed.status_code == 204, removed.text
    seq = int(removed.headers["x-akidb-seq"])
    assert seq == deleted.json()["seq"] + 1
    assert count(a, "rw", min_seq=seq) == before - 2
    assert a.client.get("/api/v1/collections/rw/documents/d1", params={"min_seq": seq}).status_code == 404
    assert a.client.get("/api/v1/collections/rw/documents/d0", params={"min_seq": seq}).status_code == 200
    assert "d2" not in search_ids(a, "rw", vecs[2])
    assert "d1" not in search_ids(a, "rw", vecs[1])

    # A collection created on A, searched on B without min_seq: its follower (or the search) opens it.
    create(a, "made-on-a")
    vector = vectors(1, seed=7)[0]
    upsert(a, "made-on-a", [{"id": "m", "vector": vector}])
    wait_until(lambda: b.client.post("/api/v1/collections/made-on-a/count", json={}).json() == {"count": 1})
    assert search_ids(b, "made-on-a", vector) == ["m"]


def test_delete_on_b_finds_a_document_just_written_on_a(cluster: Cluster) -> None:
    """A delete is a write: like an upsert it must act on everything written before it, wherever it was
    written. A delete cannot carry min_seq, so a client that wrote on A and deletes on B has no other way."""
    a, b = cluster.a, cluster.b
    create(a, "delete-fresh")
    upsert(a, "delete-fresh", [{"id": "keep", "vector": vectors(1, seed=20)[0]}])
    outcomes: list[tuple[str, str, int, int | None]] = []
    expected: list[tuple[str, str, int, int | None]] = []
    for i in range(3):
        upsert(a, "delete-fresh", [{"id": f"p{i}", "vector": vectors(1, seed=21 + i)[0]}])
        answer = b.client.post("/api/v1/collections/delete-fresh/delete", json={"ids": [f"p{i}"]})
        outcomes.append(("POST delete", f"p{i}", answer.status_code, answer.json().get("deleted")))
        upsert(a, "delete-fresh", [{"id": f"r{i}", "vector": vectors(1, seed=31 + i)[0]}])
        answer = b.client.delete(f"/api/v1/collections/delete-fresh/documents/r{i}")
        outcomes.append(("DELETE", f"r{i}", answer.status_code, None))
        expected += [("POST delete", f"p{i}", 200, 1), ("DELETE", f"r{i}", 204, None)]
    state = db_state(cluster.db, "delete-fresh")
    assert (outcomes, sorted(state.docs)) == (expected, ["keep"])


def test_min_seq_never_handed_out_is_422_and_one_not_applied_in_time_is_503(
    cluster: Cluster, tmp_path: Path, postgres_url: str
) -> None:
    a = cluster.a
    create(a, "ahead")
    # A seq no write returned: waiting cannot help, so no wait.
    response = a.client.post("/api/v1/collections/ahead/count", json={"min_seq": 10})
    assert response.status_code == 422, response.text
    assert (response.json()["extra"]["field"], response.json()["extra"]["seq"]) == ("min_seq", 0)

    # A process that follows rarely and waits not at all for min_seq: a fresh write is not there yet.
    slow_config = replica_config(postgres_url).replace(
        f"follow_interval_ms = {FOLLOW_INTERVAL_MS}", "follow_interval_ms = 10000\nconsistency_wait_ms = 0"
    )
    slow = AkidbServer(tmp_path / "slow", config=slow_config)
    slow.start()
    try:
        assert slow.client.post("/api/v1/collections/ahead/count", json={}).json() == {"count": 0}
        written = upsert(a, "ahead", [{"id": "x", "vector": vectors(1, seed=9)[0]}])
        response = slow.client.post("/api/v1/collections/ahead/count", json={"min_seq": written["seq"]})
        assert response.status_code == 503, response.text
        body = response.json()
        assert body["extra"]["code"] == "not_caught_up"
        assert (body["extra"]["applied_seq"], body["extra"]["min_seq"]) == (0, written["seq"])
        assert response.headers["retry-after"] == "1"
        # The catch-up that read started goes on: retrying gets the answer.
        wait_until(
            lambda: (
                slow.client.post("/api/v1/collections/ahead/count", json={"min_seq": written["seq"]}).json()
                == {"count": 1}
            )
        )
    finally:
        slow.close()


def test_collection_deleted_on_b_disappears_on_a_and_one_made_again_is_served_fresh(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    create(a, "doomed")
    upsert(a, "doomed", [{"id": "x", "vector": vectors(1, seed=3)[0]}])
    assert b.client.get("/api/v1/collections/doomed").status_code == 200
    removed = b.client.delete("/api/v1/collections/doomed")
    assert removed.status_code == 204
    assert removed.headers["x-akidb-seq"] == "1"
    wait_until(lambda: a.client.post("/api/v1/collections/doomed/count", json={}).status_code == 404)
    assert a.client.get("/api/v1/collections/doomed").status_code == 404

    # Deleted and made again under the same name on B, several times: A serves the new collection's
    # documents, never the old ones. The old incarnation always has more writes (a higher seq) than the new
    # one, so a min_seq from the new one is no reason to answer from the old.
    old_docs = [{"id": f"old{i}", "vector": v} for i, v in enumerate(vectors(5, seed=40))]
    create(a, "reborn")
    old_seq = upsert(a, "reborn", old_docs)["seq"]
    assert count(b, "reborn", min_seq=old_seq) == 5
    problems: list[str] = []
    for cycle in range(3):
        assert b.client.delete("/api/v1/collections/reborn").status_code == 204
        create(b, "reborn")
        new_vector = vectors(1, seed=50 + cycle)[0]
        new_seq = upsert(b, "reborn", [{"id": f"new{cycle}", "vector": new_vector}])["seq"]
        assert new_seq == 1
        # At once, with min_seq:
        n = count(a, "reborn", min_seq=new_seq)
        hits = search_ids(a, "reborn", new_vector, min_seq=new_seq)
        if n != 1 or hits != [f"new{cycle}"]:
            problems.append(f"cycle {cycle}: A with min_seq={new_seq} counted {n} and found {hits}")

        # Soon, without it:
        def serves_new(vector: list[float] = new_vector, doc_id: str = f"new{cycle}") -> bool:
            return count(a, "reborn") == 1 and search_ids(a, "reborn", vector) == [doc_id]

        wait_until(serves_new, what=f"A serves the new 'reborn' (cycle {cycle}) without min_seq")
        # Then made the old shape again (five documents, seq 5) for the next cycle.
        upsert(b, "reborn", old_docs)
        assert count(a, "reborn", min_seq=6) == 6
    assert not problems, problems


def test_a_process_started_late_is_caught_up_when_it_reports_ready(cluster: Cluster) -> None:
    a, b, c = cluster.a, cluster.b, cluster.c
    assert not c.running
    # A few thousand vectors, through both processes, some replaced and some deleted.
    create(b, "bulk")
    rng = np.random.default_rng(60)
    for batch in range(4):
        writer = (a, b)[batch % 2]
        vecs = rng.standard_normal((1000, DIMENSION)).astype(np.float32)
        upsert(
            writer,
            "bulk",
            [{"id": f"b{batch * 1000 + i}", "vector": [float(x) for x in v]} for i, v in enumerate(vecs)],
        )
    replaced = rng.standard_normal((300, DIMENSION)).astype(np.float32)
    upsert(a, "bulk", [{"id": f"b{i * 7}", "vector": [float(x) for x in v]} for i, v in enumerate(replaced)])
    gone = b.client.post("/api/v1/collections/bulk/delete", json={"ids": [f"b{i * 11}" for i in range(200)]})
    assert gone.status_code == 200, gone.text
    heads = db_heads(cluster.db)
    assert heads["bulk"][1] == 4000 - 200

    # C starts: watch /health/ready from the moment it has a port, as a load balancer would.
    answers: list[tuple[int, Any]] = []
    done = threading.Event()

    def watch() -> None:
        while c.port is None and not done.is_set():
            time.sleep(0.001)
        with httpx.Client(base_url=f"http://127.0.0.1:{c.port}", timeout=2.0) as client:
            while not done.is_set():
                try:
                    response = client.get("/health/ready")
                except httpx.TransportError:
                    time.sleep(0.005)
                    continue
                answers.append((response.status_code, response.json()))
                if response.status_code == 200:
                    return
                time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        c.start()
    finally:
        done.set()
        watcher.join(timeout=10)

    # Ready means caught up: no min_seq and no waiting, every collection holds the database's rows and seq.
    seen = {}
    for name in heads:
        shown = info(c, name)
        seen[name] = (shown["applied_seq"], count(c, name))
    assert seen == heads

    not_ready = [body for status, body in answers if status == 503]
    reasons = sorted({str(body.get("detail")) for body in not_ready})
    print(f"\nC's /health/ready while starting: {len(not_ready)} x 503 {reasons}")
    for body in not_ready:
        assert body["status"] == "not_ready", body
        assert isinstance(body["detail"], str), body
        assert body["detail"].strip(), body
        assert body["detail"] != "ready", body
    assert all(status in (200, 503) for status, _ in answers), answers

    # Three processes: each one's writes reach the other two.
    delays = []
    for seed, (writer, reader) in enumerate([(c, a), (c, b), (a, c), (b, c)] * 2):
        assert probe(writer, reader, "bulk", 200 + seed, with_min_seq=True) < VISIBLE_WITHIN_S
        delays.append(probe(writer, reader, "bulk", 300 + seed, with_min_seq=False))
    print(f"three processes, visibility without min_seq: {delay_summary(delays)}")
    assert_holds_database([a, b, c], cluster.db, "bulk", sample=150)


def test_concurrent_writers_on_three_processes_converge_on_the_database(cluster: Cluster) -> None:
    a, b, c = cluster.three()
    create(a, "busy")
    stop = threading.Event()
    writers = [Writer(server, "busy", seed=70 + i, stop=stop) for i, server in enumerate((a, b, c))]
    run_writers(writers, seconds=4.0)
    for writer in writers:
        assert not writer.transport_errors, f"{name_of(writer.server)}: {writer.transport_errors[:3]}"
    assert_writes_sane(writers, cluster.db, "busy")
    state = assert_holds_database([a, b, c], cluster.db, "busy")
    print(
        f"\nconcurrent writers: {sum(len(w.seqs) for w in writers)} writes, seq {state.last_seq}, "
        f"{len(state.docs)} documents"
    )


def test_a_process_killed_in_the_middle_of_writes_catches_up_after_restart(cluster: Cluster) -> None:
    a, b, c = cluster.three()
    create(b, "crash")
    stop_a, stop_b = threading.Event(), threading.Event()
    through_a = Writer(a, "crash", seed=80, stop=stop_a, stop_on_transport_error=True).start()
    through_b = Writer(b, "crash", seed=81, stop=stop_b).start()
    time.sleep(1.5)  # writes on both, and at least one graph checkpoint on A (every second)
    assert through_a.seqs, "no write went through A before the kill"
    assert a.kill9() == -9
    killed_at = time.monotonic()
    through_a.join()

    # B keeps serving and taking writes while A is down.
    time.sleep(1.0)
    assert [t for t in through_b.acked_at if t > killed_at], "B took no write after A was killed"
    assert search(b, "crash", vectors(1, seed=82)[0])
    assert count(c, "crash", min_seq=max(through_b.seqs)) > 0

    # A comes back on the same data dir while B still writes; once ready it has applied at least everything
    # committed before it started.
    before_start = db_state(cluster.db, "crash").last_seq
    a.start()
    assert info(a, "crash")["applied_seq"] >= before_start
    time.sleep(0.5)
    stop_b.set()
    through_b.join()
    assert not through_b.transport_errors, through_b.transport_errors[:3]
    assert_writes_sane([through_a, through_b], cluster.db, "crash")
    assert_holds_database([a, b, c], cluster.db, "crash")
    # And every other collection, written before the crash or while A was down, is right on A too.
    for name, (_, rows) in sorted(db_heads(cluster.db).items()):
        if name != "crash" and rows:
            assert_holds_database([a, b, c], cluster.db, name, sample=20)

"""Churn and the background graph rebuild (issue 13, step 6): recall@10 before and after, and the rebuild time
beside the raw limit (one hnswlib build of the same number of vectors).

    python -m bench.churn [--quick]      (part of make bench)

In process, on the real storage (SQLite store, OpenCollection, HnswIndex): N seeded clustered vectors (10,000
gaussian clusters, noise 1.2 per coordinate, normalised, 384 dims, cosine, the default HNSW parameters). The rows go
into the database and the graph is built from them in one hnswlib call (the raw limit, timed; its recall@10 is the
never-churned reference). Then churn, applied as the server's write path applies it when it reuses deleted slots
(with storage.rebuild_deleted_ratio = 0, or past it; below it new points are appended, bench/slot_reuse.py) but in
bulk (the server's sliced inserts took 570 s for 30,000 replacements here): 30 % of the rows deleted and as many new
ones written in the database, and on the graph mark_deleted then add_items into the freed slots (the pattern that
degrades an hnswlib graph), in steps of 5 %. The graph is checkpointed at the database's seq and the collection
opened from it. Then a sampled reachability check (1,000 points), and the rebuild (storage/rebuild.py) in a
background thread while this thread searches (200 queries a round, 0.2 s apart); recall@10 at the default ef against
an exact scan of the live vectors (ExactVectors) before, during and after, with search latency before, during and
after.

--quick: 20,000 vectors. Figures are reported, never asserted. Writes bench/results/churn.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np
import numpy.typing as npt

from akidb.collections.service import DEFAULT_HNSW
from akidb.storage.changes import ChangeFeed
from akidb.storage.collection import OpenCollection
from akidb.storage.db import create_db_engine, migrate
from akidb.storage.graph_health import find_unreachable
from akidb.storage.index import HnswIndex
from akidb.storage.open_collections import open_collection
from akidb.storage.rebuild import rebuild_graph
from akidb.storage.records import NewDocument
from akidb.storage.repositories import Store

ROOT = Path(__file__).resolve().parents[1]
DIMENSION = 384
# About 10 vectors a cluster at 100,000: a query's top 10 spans clusters (at 100 a cluster every figure read 1.0).
CLUSTERS = 10_000
QUERIES = 200
BATCH = 1000
STEP = 0.05
# Per-coordinate noise around the cluster centres (unit normal): clusters overlap enough that ef 64 misses some
# neighbours (recall@10 0.955 at 10,000 vectors in 1,000 clusters).
NOISE = 1.2
# Pause between rounds of searches during the rebuild, so that the bench's own load stays moderate.
ROUND_PAUSE_S = 0.2


def clustered(n: int, seed: int, centres: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    points = centres[rng.integers(0, len(centres), n)] + NOISE * rng.standard_normal((n, DIMENSION)).astype(np.float32)
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def documents(prefix: str, start: int, vectors: npt.NDArray[np.float32]) -> list[NewDocument]:
    return [NewDocument(id=f"{prefix}{start + i}", text=None, metadata={}, vector=v) for i, v in enumerate(vectors)]


def exact_top10(collection: OpenCollection, queries: npt.NDArray[np.float32]) -> list[set[int]]:
    return [set(collection.exact.search(query, 10)[0]) for query in queries]


def recall_at_10(
    collection: OpenCollection, queries: npt.NDArray[np.float32], truth: list[set[int]]
) -> tuple[float, list[float]]:
    """Mean recall@10 of the graph at the default ef against the exact top 10, and each search's seconds."""
    hits, seconds = 0, []
    for query, exact in zip(queries, truth, strict=True):
        started = time.perf_counter()
        found = collection.graph.search(query, 10)
        seconds.append(time.perf_counter() - started)
        hits += len(exact & set(found[0] if found else []))
    return hits / (10 * len(queries)), seconds


def ms(seconds: list[float], q: float) -> float:
    return float(np.quantile(seconds, q) * 1000) if seconds else float("nan")


def run(n: int) -> dict[str, Any]:
    centres = np.random.default_rng(0).standard_normal((CLUSTERS, DIMENSION)).astype(np.float32)
    work = Path(tempfile.mkdtemp(prefix="akidb-churn-"))
    engine = create_db_engine(f"sqlite:///{work / 'db.sqlite3'}", synchronous="NORMAL")
    migrate(engine)
    store, feed = Store(engine), ChangeFeed(engine)
    record = store.create_collection(
        name="churn", embedding_model=None, dimension=DIMENSION, metric="cosine", hnsw=DEFAULT_HNSW, metadata={}
    )
    vectors = clustered(n, 1, centres)
    started = time.perf_counter()
    labels: list[int] = []
    for start in range(0, n, BATCH):
        labels += store.upsert_documents(record.id, documents("d", start, vectors[start : start + BATCH])).labels
    print(f"{n} rows written in {time.perf_counter() - started:.1f} s", flush=True)

    # The raw limit: one hnswlib build of n vectors on every core.
    started = time.perf_counter()
    raw = hnswlib.Index(space="cosine", dim=DIMENSION)
    raw.init_index(
        max_elements=n, ef_construction=DEFAULT_HNSW.ef_construction, M=DEFAULT_HNSW.m, allow_replace_deleted=True
    )
    raw.add_items(vectors, np.asarray(labels, dtype=np.uint64), num_threads=-1)
    raw_build_s = time.perf_counter() - started
    print(f"raw hnswlib build of {n} x {DIMENSION}: {raw_build_s:.1f} s", flush=True)
    raw.set_ef(DEFAULT_HNSW.ef_search)
    queries = clustered(QUERIES, 2, centres)
    truth = np.asarray(labels)[np.argsort(-(queries @ vectors.T), axis=1)[:, :10]]
    found = raw.knn_query(queries, k=10, num_threads=1)[0]
    fresh_recall = float(
        np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(found, truth, strict=True)])
    )

    # Churn, as the write path applies it but in bulk: rows deleted and written in the database, and the same
    # hnswlib operations on the graph (mark_deleted, then add_items into the freed slots), in steps of 5 %.
    rng = np.random.default_rng(3)
    doomed = rng.permutation(n)[: int(0.3 * n)]
    step = int(STEP * n)
    replacements = clustered(len(doomed), 4, centres)
    started = time.perf_counter()
    for at in range(0, len(doomed), step):
        part = doomed[at : at + step]
        store.delete_documents(record.id, [f"d{i}" for i in part])
        for i in part:
            raw.mark_deleted(labels[i])
        new_labels = []
        for start in range(at, min(at + step, len(doomed)), BATCH):
            stop = min(start + BATCH, at + step)
            new_labels += store.upsert_documents(record.id, documents("r", start, replacements[start:stop])).labels
        raw.add_items(
            replacements[at : at + len(part)], np.asarray(new_labels, np.uint64), num_threads=-1, replace_deleted=True
        )
    churn_s = time.perf_counter() - started
    print(f"churn: {len(doomed)} deleted and {len(doomed)} written in {churn_s:.1f} s", flush=True)
    churned = HnswIndex(
        dimension=DIMENSION, metric="cosine", params=DEFAULT_HNSW, loaded=(raw, store.last_seq(record.id))
    )
    churned.save(work / "indexes" / record.uid)
    collection = open_collection(feed, store.get_collection("churn"), work / "indexes")
    assert collection.graph.applied_seq == store.last_seq(record.id)
    ratio = collection.graph.deleted_ratio
    sample = min(1000, collection.live_count)
    unreachable = find_unreachable(collection, sample, np.random.default_rng(5))
    truth_now = exact_top10(collection, queries)  # no writes from here on: the truth stays
    before, before_seconds = recall_at_10(collection, queries, truth_now)

    during: list[float] = []
    during_seconds: list[float] = []
    report_box: list[Any] = []
    rebuild = threading.Thread(target=lambda: report_box.append(rebuild_graph(collection, reason="bench")))
    rebuild.start()
    while rebuild.is_alive():
        value, seconds = recall_at_10(collection, queries, truth_now)
        during.append(value)
        during_seconds.extend(seconds)
        rebuild.join(ROUND_PAUSE_S)
    rebuild.join()
    report = report_box[0]
    after, after_seconds = recall_at_10(collection, queries, truth_now)
    unreachable_after = find_unreachable(collection, sample, np.random.default_rng(5))
    engine.dispose()
    return {
        "n": n,
        "dimension": DIMENSION,
        "cpus": os.cpu_count(),
        "hnsw": {"m": DEFAULT_HNSW.m, "ef_construction": DEFAULT_HNSW.ef_construction, "ef": DEFAULT_HNSW.ef_search},
        "raw_build_s": raw_build_s,
        "churn_s": churn_s,
        "deleted_ratio_before_rebuild": ratio,
        "unreachable_in_sample_before": len(unreachable),
        "unreachable_in_sample_after": len(unreachable_after),
        "sample": sample,
        "recall_fresh_graph": fresh_recall,
        "recall_before_rebuild": before,
        "recall_during_rebuild_min": min(during) if during else None,
        "recall_after_rebuild": after,
        "rebuild_s": report.seconds,
        "rebuild_swapped": report.swapped,
        "rebuild_live": report.live,
        "search_p50_ms": {
            "before": ms(before_seconds, 0.5),
            "during": ms(during_seconds, 0.5),
            "after": ms(after_seconds, 0.5),
        },
        "search_p95_ms_during": ms(during_seconds, 0.95),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 vectors")
    parser.add_argument("--n", type=int, default=None, help="vectors (default 100,000)")
    args = parser.parse_args()
    n = args.n or (20_000 if args.quick else 100_000)
    result = run(n)
    r = result
    print(f"\nchurn: {n} x {DIMENSION} cosine, 30 % deleted and replaced, {r['cpus']} CPUs, ef {r['hnsw']['ef']}")
    print(f"recall@10 fresh graph {r['recall_fresh_graph']:.4f} (the raw limit: a graph never churned)")
    sample = r["sample"]
    ratio = r["deleted_ratio_before_rebuild"]
    print(
        f"recall@10 before rebuild {r['recall_before_rebuild']:.4f}  (deleted ratio {ratio:.3f}, "
        f"{r['unreachable_in_sample_before']} of {sample} sampled points unreachable)"
    )
    print(f"recall@10 during rebuild, lowest round {r['recall_during_rebuild_min']}")
    print(
        f"recall@10 after rebuild {r['recall_after_rebuild']:.4f}  "
        f"({r['unreachable_in_sample_after']} of {sample} unreachable)"
    )
    print(
        f"rebuild {r['rebuild_s']:.1f} s for {r['rebuild_live']} points (swapped: {r['rebuild_swapped']}), "
        f"searches running beside it, vs the raw hnswlib build of {n}: {r['raw_build_s']:.1f} s"
    )
    p50 = r["search_p50_ms"]
    print(
        f"search p50 ms: before {p50['before']:.2f}, during rebuild {p50['during']:.2f} "
        f"(p95 {r['search_p95_ms_during']:.2f}), after {p50['after']:.2f}"
    )
    out = ROOT / "bench" / "results" / "churn.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

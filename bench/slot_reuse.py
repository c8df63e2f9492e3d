"""Writes that hnswlib would answer with updatePoint: new documents after deletes, and replaced vectors.

    python -m bench.slot_reuse [--quick]      (part of make bench)

hnswlib fills a deleted slot, and replaces a label's vector, by re-linking its neighbourhood (updatePoint); an
appended point is linked once. Below storage.rebuild_deleted_ratio (HnswIndex.reuse_slots_from) the server appends
in both cases: a new document takes a new slot, a replaced vector becomes a new point under the label's next
version and its old point is deleted; the background rebuild reclaims the slots. At or past the ratio, or with
rebuilds off, it uses updatePoint as before. Here, on HnswIndex as the server's write path calls it (batches of
100, the graph work in slices under the write lock): N seeded clustered vectors (384 dims, cosine, the default
HNSW parameters), then either 10 % deleted and as many new documents upserted, or 10 % of the vectors replaced;
each once appended (reuse_slots_from 0.2) and once through updatePoint (0), beside raw hnswlib doing the same in
the same run (add_items appending, into deleted slots, on existing labels). Also recall@10 at the default ef
against exact search, and the graph's slots.

--quick: 10,000 vectors. Figures are reported, never asserted. Writes bench/results/slot_reuse.json.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import hnswlib
import numpy as np
import numpy.typing as npt

from akidb.collections.service import DEFAULT_HNSW
from akidb.storage.index import HnswIndex
from bench.churn import DIMENSION, clustered
from bench.serving import RESULTS

BATCH = 100
CHANGED = 0.1
QUERIES = 200


def recall_at_10(graph: HnswIndex, live: npt.NDArray[np.float32], labels: npt.NDArray[np.int64]) -> float:
    queries = live[np.random.default_rng(9).choice(len(live), QUERIES, replace=False)] + 0.01
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = np.argsort(-(queries @ live.T), axis=1)[:, :10]
    found = 0
    for query, best in zip(queries, truth, strict=True):
        hits, _ = graph.search(query, 10)
        found += len(set(hits) & set(labels[best].tolist()))
    return found / (10 * QUERIES)


def through_the_gateway(
    vectors: npt.NDArray[np.float32], new: npt.NDArray[np.float32], *, replace: bool, reuse_slots_from: float
) -> dict[str, Any]:
    n = len(vectors)
    graph = HnswIndex(dimension=DIMENSION, metric="cosine", params=DEFAULT_HNSW, capacity=n)
    graph.reuse_slots_from = reuse_slots_from
    for start in range(0, n, 1000):
        part = list(range(start, min(n, start + 1000)))
        graph.upsert(part, vectors[part], is_new=[True] * len(part), seq=1)
    chosen = list(range(0, n, int(1 / CHANGED)))
    live = vectors.copy()
    if replace:
        written = chosen
        live[chosen] = new
    else:
        graph.delete(chosen, seq=2)
        written = list(range(n, n + len(new)))
        live = np.concatenate([live, new])
    started = time.perf_counter()
    for start in range(0, len(new), BATCH):
        part = written[start : start + BATCH]
        graph.upsert(part, new[start : start + BATCH], is_new=[not replace] * len(part), seq=3)
    seconds = time.perf_counter() - started
    labels = np.arange(len(live))
    if not replace:
        keep = np.setdiff1d(labels, chosen)
        live, labels = live[keep], labels[keep]
    return {
        "docs_per_s": len(new) / seconds,
        "slots": int(graph._index.element_count),
        "deleted_ratio": graph.deleted_ratio,
        "recall_at_10": recall_at_10(graph, live, labels),
    }


def raw(vectors: npt.NDArray[np.float32], new: npt.NDArray[np.float32], how: str) -> float:
    """hnswlib alone: `append` new labels, fill `deleted` slots, or `update` existing labels."""
    n = len(vectors)
    index = hnswlib.Index(space="cosine", dim=DIMENSION)
    index.init_index(
        max_elements=n + len(new), ef_construction=DEFAULT_HNSW.ef_construction, M=DEFAULT_HNSW.m,
        allow_replace_deleted=True,
    )  # fmt: skip
    index.add_items(vectors, np.arange(n), num_threads=-1)
    chosen = np.arange(0, n, int(1 / CHANGED))
    if how != "update":
        for label in chosen:
            index.mark_deleted(label)
    labels = chosen if how == "update" else np.arange(n, n + len(new))
    started = time.perf_counter()
    for start in range(0, len(new), BATCH):
        index.add_items(
            new[start : start + BATCH], labels[start : start + BATCH], num_threads=-1, replace_deleted=how == "deleted"
        )
    return len(new) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 10_000 if args.quick else 50_000
    centres = np.random.default_rng(0).standard_normal((n // 10, DIMENSION)).astype(np.float32)
    vectors = clustered(n, 1, centres)
    new = clustered(int(n * CHANGED), 2, centres)
    result: dict[str, Any] = {"n": n, "changed": CHANGED, "batch": BATCH}
    print(f"{n:,} vectors; {len(new):,} writes in batches of {BATCH}:")
    cases = [
        ("new documents after 10 % deleted", False, ("append", "deleted")),
        ("10 % of the vectors replaced", True, ("append", "update")),
    ]
    for case, replace, (appending, updating) in cases:
        for policy, reuse_slots_from, how in (("appended", 0.2, appending), ("updatePoint", 0.0, updating)):
            row = through_the_gateway(vectors, new, replace=replace, reuse_slots_from=reuse_slots_from)
            row["raw_docs_per_s"] = raw(vectors, new, how)
            result[f"{'replaced' if replace else 'new'}_{policy}"] = row
            print(
                f"  {case}, {policy}: {row['docs_per_s']:,.0f} docs/s (raw hnswlib {how} {row['raw_docs_per_s']:,.0f}, "
                f"{row['docs_per_s'] / row['raw_docs_per_s']:.2f}x), slots {row['slots']:,}, "
                f"deleted ratio {row['deleted_ratio']:.3f}, recall@10 {row['recall_at_10']:.4f}",
                flush=True,
            )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "slot_reuse.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

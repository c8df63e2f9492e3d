"""New documents after deletes: appended to the graph, or put into the deleted slots (HnswIndex.reuse_slots_from).

    python -m bench.slot_reuse [--quick]      (part of make bench)

hnswlib fills a deleted slot by re-linking its neighbourhood (updatePoint), as it does for a replaced vector;
an appended point is linked once. Here, on HnswIndex as the server's write path calls it (batches of 100, the
graph work in slices under the write lock): N seeded clustered vectors (384 dims, cosine, the default HNSW
parameters), 10 % of them deleted, then as many new ones upserted, once with the server's default
(reuse_slots_from = storage.rebuild_deleted_ratio, 0.2: appended) and once with slot reuse (0: what the
server did before, and still does past the ratio or with rebuilds off). Beside them, the raw limits in the same
run: hnswlib add_items appending (the same batches, one call each) and into deleted slots
(replace_deleted=True). Also recall@10 at the default ef against exact search, and the graph's slots.

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
DELETED = 0.1
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
    vectors: npt.NDArray[np.float32], new: npt.NDArray[np.float32], reuse_slots_from: float
) -> dict[str, Any]:
    n = len(vectors)
    graph = HnswIndex(dimension=DIMENSION, metric="cosine", params=DEFAULT_HNSW, capacity=n)
    graph.reuse_slots_from = reuse_slots_from
    for start in range(0, n, 1000):
        part = list(range(start, min(n, start + 1000)))
        graph.upsert(part, vectors[part], is_new=[True] * len(part), seq=1)
    gone = list(range(0, n, int(1 / DELETED)))
    graph.delete(gone, seq=2)
    new_labels = list(range(n, n + len(new)))
    started = time.perf_counter()
    for start in range(0, len(new), BATCH):
        part = new_labels[start : start + BATCH]
        graph.upsert(part, new[start : start + BATCH], is_new=[True] * len(part), seq=3)
    seconds = time.perf_counter() - started
    keep = np.setdiff1d(np.arange(n), gone)
    live = np.concatenate([vectors[keep], new])
    labels = np.concatenate([keep, np.asarray(new_labels)])
    return {
        "docs_per_s": len(new) / seconds,
        "slots": int(graph._index.element_count),
        "deleted_ratio": graph.deleted_ratio,
        "recall_at_10": recall_at_10(graph, live, labels),
    }


def raw(vectors: npt.NDArray[np.float32], new: npt.NDArray[np.float32], replace_deleted: bool) -> float:
    n = len(vectors)
    index = hnswlib.Index(space="cosine", dim=DIMENSION)
    index.init_index(
        max_elements=n + len(new), ef_construction=DEFAULT_HNSW.ef_construction, M=DEFAULT_HNSW.m,
        allow_replace_deleted=True,
    )  # fmt: skip
    index.add_items(vectors, np.arange(n), num_threads=-1)
    for label in range(0, n, int(1 / DELETED)):
        index.mark_deleted(label)
    started = time.perf_counter()
    for start in range(0, len(new), BATCH):
        labels = np.arange(n + start, n + min(len(new), start + BATCH))
        index.add_items(new[start : start + BATCH], labels, num_threads=-1, replace_deleted=replace_deleted)
    return len(new) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 10_000 if args.quick else 50_000
    centres = np.random.default_rng(0).standard_normal((n // 10, DIMENSION)).astype(np.float32)
    vectors = clustered(n, 1, centres)
    new = clustered(int(n * DELETED), 2, centres)
    result: dict[str, Any] = {"n": n, "deleted": DELETED, "batch": BATCH}
    result["raw_append_docs_per_s"] = raw(vectors, new, replace_deleted=False)
    result["raw_into_deleted_slots_docs_per_s"] = raw(vectors, new, replace_deleted=True)
    result["appended"] = through_the_gateway(vectors, new, reuse_slots_from=0.2)
    result["into_deleted_slots"] = through_the_gateway(vectors, new, reuse_slots_from=0.0)
    print(f"{n:,} vectors, {DELETED:.0%} deleted, then {len(new):,} new ones in batches of {BATCH}:")
    for name, raw_key in (
        ("appended", "raw_append_docs_per_s"),
        ("into_deleted_slots", "raw_into_deleted_slots_docs_per_s"),
    ):
        row = result[name]
        print(
            f"  {name}: {row['docs_per_s']:,.0f} docs/s (raw hnswlib {result[raw_key]:,.0f}, "
            f"{row['docs_per_s'] / result[raw_key]:.2f}x), slots {row['slots']:,}, "
            f"deleted ratio {row['deleted_ratio']:.3f}, recall@10 {row['recall_at_10']:.4f}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "slot_reuse.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

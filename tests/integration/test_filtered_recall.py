"""Filtered search on clustered vectors, above the exact-search threshold, never loses recall to a filter.

Selectivities 100, 50, 10, 1 and 0.1 %, with filters unrelated to the vectors (a random bucket) and filters
anti-correlated with the query's neighbourhood (only the clusters farthest from the queries pass). Each
query's recall@10 is measured against exact search over exactly the passing documents. The planner runs as
configured, and once more with the exact scan priced out, so that the graph plans (hnswlib's filter
callable, the oversampled walk) and their fall-backs serve the queries and are held to the same bar.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from akidb.collections import planner
from akidb.storage.db import create_db_engine, migrate
from tests.oracle import brute_distances
from tests.services import Services, build_services

DOCS = 20_000
DIM = 48
CLUSTERS = 100
BUCKETS = 1000
QUERIES = 25
SHARES = (1.0, 0.5, 0.1, 0.01, 0.001)
MIN_RECALL = 0.95


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((CLUSTERS, DIM)).astype(np.float32)
    cluster = rng.integers(0, CLUSTERS, DOCS)
    vectors = (centres[cluster] + 0.35 * rng.standard_normal((DOCS, DIM))).astype(np.float32)
    # Queries come from near one centre; clusters are ranked by their distance from it (0 = nearest).
    home = centres[0]
    order = np.argsort(((centres - home) ** 2).sum(axis=1))
    rank_of_cluster = np.empty(CLUSTERS, np.int64)
    rank_of_cluster[order] = np.arange(CLUSTERS)
    rank = rank_of_cluster[cluster]
    bucket = rng.integers(0, BUCKETS, DOCS)
    root = tmp_path_factory.mktemp("recall")
    engine = create_db_engine(f"sqlite:///{root / 'db.sqlite3'}", synchronous="OFF")
    migrate(engine)
    services = build_services(engine, root / "indexes", exact_search_max=1000)

    async def load() -> None:
        await services.collections.create(name="c", embedding_model=None, dimension=DIM, metric="l2")
        for start in range(0, DOCS, 1000):
            docs = [
                SimpleNamespace(
                    id=f"d{i:05d}",
                    text=None,
                    vector=vectors[i].tolist(),
                    # rank_tail: the doc's cluster rank from the far end, so "rank_tail < r" keeps the far clusters.
                    metadata={"bucket": int(bucket[i]), "rank_tail": int(CLUSTERS - 1 - rank[i]), "i": i},
                )
                for i in range(start, min(DOCS, start + 1000))
            ]
            await services.documents.upsert("c", docs)

    asyncio.run(load())
    queries = (home + 0.35 * rng.standard_normal((QUERIES, DIM))).astype(np.float32)
    yield SimpleNamespace(services=services, vectors=vectors, bucket=bucket, rank=rank, queries=queries, engine=engine)
    services.close()
    engine.dispose()


def _filters(share: float, corpus: SimpleNamespace) -> dict[str, tuple[dict[str, Any], np.ndarray]]:
    """Filters that pass about `share` of the documents, with the mask of exactly those they pass."""
    buckets = round(share * BUCKETS)
    unrelated = ({"bucket": {"$lt": buckets}}, corpus.bucket < buckets)
    # Anti-correlated: whole clusters from the far end, as many as reach the share (at least one).
    counts = np.bincount(CLUSTERS - 1 - corpus.rank, minlength=CLUSTERS)
    clusters = max(1, int(np.searchsorted(np.cumsum(counts), share * DOCS)))
    if share >= 1.0:
        clusters = CLUSTERS
    tail = CLUSTERS - 1 - corpus.rank
    anti = ({"rank_tail": {"$lt": clusters}}, tail < clusters)
    if counts[0] > share * DOCS:  # less than the farthest cluster: a random part of it
        part = round(share * DOCS / counts[0] * BUCKETS)
        anti = (
            {"$and": [{"rank_tail": 0}, {"bucket": {"$lt": part}}]},
            (tail == 0) & (corpus.bucket < part),
        )
    return {"unrelated": unrelated, "anti-correlated": anti}


def _plans() -> dict[str, float]:
    found: dict[str, float] = {}
    for metric in REGISTRY.collect():
        if metric.name == "akidb_search_plan":
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    found[sample.labels["plan"]] = sample.value
    return found


def _recalls(corpus: SimpleNamespace, where: dict[str, Any], mask: np.ndarray) -> list[float]:
    services: Services = corpus.services
    passing = np.flatnonzero(mask)
    recalls = []
    for query in corpus.queries:
        result = asyncio.run(services.search.search("c", vector=query.tolist(), top_k=10, filter=where, include=()))
        exact = passing[np.argsort(brute_distances("l2", query, corpus.vectors[passing]), kind="stable")[:10]]
        want = {f"d{i:05d}" for i in exact}
        got = [hit.id for hit in result.hits]
        assert len(got) == min(10, len(passing))
        assert all(mask[int(doc_id[1:])] for doc_id in got), "a hit that fails the filter"
        recalls.append(len(want & set(got)) / len(want))
    return recalls


@pytest.mark.slow
@pytest.mark.parametrize("exact_priced_out", [False, True], ids=["as-configured", "graph-preferred"])
def test_filtered_recall_at_every_selectivity(
    corpus: SimpleNamespace, exact_priced_out: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if exact_priced_out:
        # Scans priced 1,000x: the planner walks the graph wherever a graph plan is allowed.
        monkeypatch.setattr(planner, "GATHER_US_PER_FLOAT", planner.GATHER_US_PER_FLOAT * 1000)
        monkeypatch.setattr(planner, "SCAN_US_PER_FLOAT", planner.SCAN_US_PER_FLOAT * 1000)
    before = _plans()
    report = []
    for share in SHARES:
        for kind, (where, mask) in _filters(share, corpus).items():
            recalls = _recalls(corpus, where, mask)
            report.append((share, kind, int(mask.sum()), float(np.mean(recalls)), float(np.min(recalls))))
    used = {plan: count - before.get(plan, 0.0) for plan, count in _plans().items()}
    print("\nshare kind passing mean-recall min-recall", *report, f"plans: {used}", sep="\n")
    for share, kind, passing, mean, _ in report:
        assert mean >= MIN_RECALL, f"{kind} filter passing {passing} ({share:.1%}): recall@10 {mean:.3f}"
    if exact_priced_out:
        assert used.get("graph_filtered", 0) > 0, used
        assert used.get("graph_oversampled", 0) > 0, used

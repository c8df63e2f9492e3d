"""A million vectors through a real `akidb serve` (SQLite, hnswlib, the collection defaults), beside bare hnswlib.

    python -m bench.million [--n 1000000] [--queries 200]      (part of make bench; not in make test)

The vectors are MiniLM embeddings of the fortunes (bench.serving's cached corpus vectors) each drawn many
times with Gaussian noise and normalised again: clusters around real embeddings, so the graph meets the
neighbourhoods of real text rather than the uniform sphere. Queries are fresh draws around the same
centres. Reported: the build (2 importers, batches of 500, until every document is acknowledged) in
documents/s; the server's RSS per million vectors (RSS after the build less RSS of the empty server);
vector search p50 over HTTP with one client at the default ef, and recall@10 against exact brute force;
bare hnswlib with the same parameters, in this process, as the raw limit of each figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

import numpy as np
import orjson

from akidb.collections.service import DEFAULT_HNSW
from bench.serving import (
    MODEL,
    RESULTS,
    Connection,
    bare_index,
    corpus_vectors,
    load_corpus,
    percentile,
    process_rss_bytes,
    raw_provider,
    running_server,
)

DEFAULTS = DEFAULT_HNSW
BATCH = 500
IMPORTERS = 2
TOP_K = 10
NOISE = 0.35  # of a unit vector's length, spread over all dimensions


def centres() -> np.ndarray:
    texts = [doc["text"] for doc in load_corpus()]
    provider = raw_provider("onnx", "int8")
    try:
        return corpus_vectors(provider.embed, "onnx", "int8", texts)  # type: ignore[attr-defined]
    finally:
        provider.close()


def draw(centre_vectors: np.ndarray, rows: np.ndarray, seed: int) -> np.ndarray:
    """Vectors for `rows` (deterministic per row block): a centre plus noise, normalised."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(centre_vectors), size=len(rows))
    noise = rng.standard_normal((len(rows), centre_vectors.shape[1])).astype(np.float32)
    vectors = centre_vectors[picks] + noise * (NOISE / np.sqrt(centre_vectors.shape[1]))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)


def all_vectors(centre_vectors: np.ndarray, n: int) -> np.ndarray:
    out = np.empty((n, centre_vectors.shape[1]), dtype=np.float32)
    for start in range(0, n, BATCH):
        rows = np.arange(start, min(start + BATCH, n))
        out[rows] = draw(centre_vectors, rows, seed=start)
    return out


def exact_top(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Brute-force top-10 ids by cosine (all vectors are unit length)."""
    tops = np.empty((len(queries), TOP_K), dtype=np.int64)
    for start in range(0, len(queries), 50):
        scores = queries[start : start + 50] @ vectors.T
        part = np.argpartition(-scores, TOP_K, axis=1)[:, :TOP_K]
        order = np.take_along_axis(scores, part, axis=1).argsort(axis=1)[:, ::-1]
        tops[start : start + 50] = np.take_along_axis(part, order, axis=1)
    return tops


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t.tolist())) / TOP_K for f, t in zip(found, truth, strict=True)]))


def bare_hnswlib(vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    index, build_s = bare_index(vectors, BATCH)
    latencies, found = [], []
    for query in queries:
        began = time.perf_counter()
        labels, _ = index.knn_query(query[None, :], k=TOP_K, num_threads=1)
        latencies.append((time.perf_counter() - began) * 1000)
        found.append(labels[0].tolist())
    return {
        "build_s": build_s,
        "docs_per_s": len(vectors) / build_s,
        "search_p50_ms": percentile(latencies, 50),
        "recall_at_10": recall(found, truth),
        "index_bytes": index.element_count * (vectors.shape[1] * 4 + DEFAULTS.m * 2 * 4 + 16),
    }


async def build_through_server(port: int, centre_vectors: np.ndarray, n: int) -> float:
    blocks = iter(range(0, n, BATCH))

    async def importer() -> None:
        connection = Connection(port)
        try:
            for start in blocks:
                rows = np.arange(start, min(start + BATCH, n))
                vectors = draw(centre_vectors, rows, seed=start)
                ids = [str(row) for row in rows.tolist()]
                documents = [{"id": doc_id, "vector": vector} for doc_id, vector in zip(ids, vectors, strict=True)]
                body = orjson.dumps({"documents": documents}, option=orjson.OPT_SERIALIZE_NUMPY)
                status, payload = await connection.request("POST", "/api/v1/collections/million/upsert", body)
                if status != 200:
                    raise SystemExit(f"upsert at {start}: {status} {payload[:300]!r}")
        finally:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(importer() for _ in range(IMPORTERS)))
    return time.perf_counter() - started


async def search_through_server(port: int, queries: np.ndarray) -> tuple[list[float], list[list[int]]]:
    connection = Connection(port)
    latencies, found = [], []
    try:
        for query in queries:
            body = orjson.dumps({"vector": query, "top_k": TOP_K}, option=orjson.OPT_SERIALIZE_NUMPY)
            began = time.perf_counter()
            status, payload = await connection.request("POST", "/api/v1/collections/million/search", body)
            latencies.append((time.perf_counter() - began) * 1000)
            if status != 200:
                raise SystemExit(f"search: {status} {payload[:300]!r}")
            found.append([int(hit["id"]) for hit in orjson.loads(payload)["results"]])
    finally:
        connection.close()
    return latencies, found


async def serve(centre_vectors: np.ndarray, n: int, queries: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    with running_server("onnx", "int8") as server:
        admin = Connection(server.port)
        status, payload = await admin.request(
            "POST", "/api/v1/collections", json.dumps({"name": "million", "dimension": 384}).encode()
        )
        if status != 201:
            raise SystemExit(f"create: {status} {payload[:300]!r}")
        empty_rss = process_rss_bytes(server.pid)
        build_s = await build_through_server(server.port, centre_vectors, n)
        status, payload = await admin.request("GET", "/api/v1/collections/million")
        stored = orjson.loads(payload)["document_count"]
        await search_through_server(server.port, queries[:20])  # warm-up
        latencies, found = await search_through_server(server.port, queries)
        rss = process_rss_bytes(server.pid)
        admin.close()
    return {
        "stored": stored,
        "build_s": build_s,
        "docs_per_s": n / build_s,
        "rss_empty_mb": empty_rss / 2**20,
        "rss_mb": rss / 2**20,
        "rss_per_million_mb": (rss - empty_rss) / 2**20 * 1_000_000 / n,
        "search_p50_ms": percentile(latencies, 50),
        "search_p95_ms": percentile(latencies, 95),
        "recall_at_10": recall(found, truth),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors to store")
    parser.add_argument("--queries", type=int, default=200, help="searches timed and checked for recall")
    args = parser.parse_args()
    centre_vectors = centres()
    queries = draw(centre_vectors, np.arange(args.queries), seed=2**31)
    print(f"drawing {args.n:,} vectors around {len(centre_vectors):,} MiniLM embeddings", flush=True)
    vectors = all_vectors(centre_vectors, args.n)
    truth = exact_top(vectors, queries)
    bare = bare_hnswlib(vectors, queries, truth)
    print("bare hnswlib: " + ", ".join(f"{k} {v:,.3f}" for k, v in bare.items()), flush=True)
    del vectors
    gateway = asyncio.run(serve(centre_vectors, args.n, queries, truth))
    print("akidb serve: " + ", ".join(f"{k} {v:,.3f}" for k, v in gateway.items()), flush=True)
    vectors_mb = args.n * 384 * 4 / 2**20
    print(
        f"\n{args.n:,} x 384, M={DEFAULTS.m}, ef_construction={DEFAULTS.ef_construction}, ef={DEFAULTS.ef_search}, "
        f"{os.cpu_count()} CPUs\n"
        f"build: {gateway['docs_per_s']:,.0f} docs/s through HTTP vs {bare['docs_per_s']:,.0f} bare "
        f"({gateway['docs_per_s'] / bare['docs_per_s']:.2f}x)\n"
        f"RSS per million vectors: {gateway['rss_per_million_mb']:,.0f} MiB "
        f"(the float32 vectors alone: {vectors_mb * 1_000_000 / args.n:,.0f} MiB)\n"
        f"search p50: {gateway['search_p50_ms']:.2f} ms over HTTP vs {bare['search_p50_ms']:.3f} ms bare knn_query\n"
        f"recall@10: {gateway['recall_at_10']:.3f} vs {bare['recall_at_10']:.3f} bare"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"n": args.n, "queries": args.queries, "model": MODEL, "bare_hnswlib": bare, "akidb": gateway}
    (RESULTS / "million.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

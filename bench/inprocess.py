"""The service layer's own cost, no HTTP: the corpus vectors upserted into a real SQLite collection (batches of
100, one client) and serial vector searches through SearchService, beside bare hnswlib's knn_query p50 (its raw
limit, measured by bench.serving on the same vectors). Part of bench.serving; runs before any server does.

- upsert: inserts, then the first 5,000 again with the same vectors (a text or metadata edit), docs/s;
- search p50, top 10: with the default include (text and metadata: one SQL read for the text), and with
  include metadata only (hydrated from memory, no SQL).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from akidb.collections.documents import DocumentService
from akidb.collections.replica import Replica
from akidb.collections.search import SearchService
from akidb.collections.service import CollectionService
from akidb.config import EmbeddingSettings, LimitsSettings
from akidb.embedding.registry import default_registry
from akidb.embedding.router import EmbeddingRouter
from akidb.storage.changes import ChangeFeed
from akidb.storage.db import create_db_engine, migrate
from akidb.storage.open_collections import OpenCollections
from akidb.storage.repositories import Store

BATCH = 100
REPLACED = 5000
TOP_K = 10


@dataclass(frozen=True)
class _Doc:
    id: str
    text: str
    vector: list[float]
    metadata: dict[str, Any]


def _p50_ms(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1000


async def _measure(root: Path, vectors: npt.NDArray[np.float32], texts: list[str], queries: int) -> dict[str, Any]:
    engine = create_db_engine(f"sqlite:///{root / 'bench.db'}")
    migrate(engine)
    store, feed = Store(engine), ChangeFeed(engine)
    collections = OpenCollections(store, feed, root / "indexes")
    replica = Replica(collections, feed)
    replica.start()
    limits = LimitsSettings()
    router = EmbeddingRouter(EmbeddingSettings(provider="mock"), default_registry(), limits=limits)
    try:
        await CollectionService(store, replica, default_registry(), default_model=router.default_model).create(
            name="bench", embedding_model=None, dimension=vectors.shape[1]
        )
        documents = DocumentService(store, replica, router, limits=limits)
        docs = [
            _Doc(f"doc-{i}", texts[i % len(texts)], vector.tolist(), {"source": f"s{i % 7}"})
            for i, vector in enumerate(vectors)
        ]
        rates = {}
        for key, chosen in (("upsert_insert_docs_per_s", docs), ("upsert_same_vectors_docs_per_s", docs[:REPLACED])):
            started = time.perf_counter()
            for start in range(0, len(chosen), BATCH):
                await documents.upsert("bench", chosen[start : start + BATCH])
            rates[key] = len(chosen) / (time.perf_counter() - started)
        search = SearchService(store, replica, router, limits=limits, exact_search_max=5000)
        figures: dict[str, Any] = {"vectors": len(vectors), **rates}
        for key, include in (("search_p50_ms", ("text", "metadata")), ("search_metadata_only_p50_ms", ("metadata",))):
            latencies = []
            for row in range(queries):
                query = vectors[row % len(vectors)].tolist()
                started = time.perf_counter()
                await search.search("bench", vector=query, top_k=TOP_K, include=include)
                latencies.append(time.perf_counter() - started)
            figures[key] = _p50_ms(latencies)
        return figures
    finally:
        collections.close()
        router.close()
        engine.dispose()


def measure_inprocess(vectors: npt.NDArray[np.float32], texts: list[str], queries: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        return asyncio.run(_measure(Path(scratch), vectors, texts, queries))

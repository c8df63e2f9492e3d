"""Search: dense (k-NN through the planner), keyword (BM25) or hybrid (reciprocal-rank fusion of the two),
every mode restricted by the metadata filter, then the hits hydrated from the rows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anyio.to_thread
import numpy as np
import numpy.typing as npt

from akidb.collections import filters
from akidb.collections.planner import dense_search
from akidb.collections.recall import RecallEstimator
from akidb.collections.replica import Replica
from akidb.collections.validation import (
    DEFAULT_LIMITS,
    check_ef_search,
    check_include,
    check_text,
    check_text_length,
    check_top_k,
    check_vector,
)
from akidb.config import LimitsSettings
from akidb.embedding.router import EmbeddingRouter
from akidb.errors import InvalidRequest
from akidb.storage.collection import OpenCollection
from akidb.storage.repositories import Store

INCLUDABLE = ("text", "metadata", "vector")
SEARCH_THREADS = 2
MODES = ("dense", "keyword", "hybrid")
MIN_HYBRID_CANDIDATES = 100
# fusion.candidates may be up to this many times limits.max_top_k (and at least MIN_HYBRID_CANDIDATES):
# 10,000 with the default limit.
CANDIDATES_PER_TOP_K = 10
Mode = Literal["dense", "keyword", "hybrid"]


@dataclass(frozen=True, slots=True)
class Fusion:
    """Reciprocal-rank fusion: score = sum over the two rankings of weight / (k + rank), rank from 1.
    `candidates` is how deep each side ranks (default: the larger of 100 and top_k)."""

    k: float = 60.0
    dense_weight: float = 1.0
    keyword_weight: float = 1.0
    candidates: int | None = None


@dataclass(frozen=True, slots=True)
class SearchHit:
    id: str
    score: float
    distance: float | None
    text: str | None
    metadata: dict[str, Any] | None
    vector: list[float] | None


@dataclass(frozen=True, slots=True)
class SearchResult:
    hits: list[SearchHit]
    model: str | None
    total_tokens: int
    duration_ms: float


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~3x, and this one is made per hit
class _Ranked:
    label: int
    score: float
    distance: float | None


def score_of(metric: str, distance: float) -> float:
    return -distance if metric == "l2" else 1.0 - distance


def max_candidates(max_top_k: int) -> int:
    """The most `fusion.candidates` may ask for: each side ranks that deep, so it is bounded like top_k."""
    return max(MIN_HYBRID_CANDIDATES, CANDIDATES_PER_TOP_K * max_top_k)


def _check_fusion(fusion: Fusion, max_top_k: int) -> None:
    if not (math.isfinite(fusion.k) and fusion.k > 0):
        raise InvalidRequest(f"fusion.k must be a positive number, got {fusion.k}", extra={"field": "fusion.k"})
    for name in ("dense_weight", "keyword_weight"):
        weight = getattr(fusion, name)
        if not (math.isfinite(weight) and weight >= 0):
            raise InvalidRequest(
                f"fusion.{name} must be a number >= 0, got {weight}", extra={"field": f"fusion.{name}"}
            )
    # RRF scores are sums of weight / (k + rank): they must stay numbers on the wire.
    if not math.isfinite((fusion.dense_weight + fusion.keyword_weight) / (fusion.k + 1)):
        raise InvalidRequest(
            "fusion: dense_weight and keyword_weight are too large for k; scores would overflow",
            extra={"field": "fusion.dense_weight"},
        )
    limit = max_candidates(max_top_k)
    if fusion.candidates is not None and not 1 <= fusion.candidates <= limit:
        raise InvalidRequest(
            f"fusion.candidates must be between 1 and {limit}, got {fusion.candidates} "
            f"({CANDIDATES_PER_TOP_K} × limits.max_top_k, at least {MIN_HYBRID_CANDIDATES})",
            extra={"field": "fusion.candidates", "limit": limit},
        )


class SearchService:
    # Set by the lifespan: samples the searches the graph serves for an exact re-run (None: no telemetry).
    recall: RecallEstimator | None = None

    def __init__(
        self,
        store: Store,
        replica: Replica,
        router: EmbeddingRouter,
        *,
        limits: LimitsSettings = DEFAULT_LIMITS,
        exact_search_max: int,
    ) -> None:
        self.store = store
        self.replica = replica
        self.router = router
        # top_k (and so fusion.candidates), characters of the query and the filter's size: all checked
        # before the query is embedded.
        self.limits = limits
        self.exact_search_max = exact_search_max
        # A few threads, not one per concurrent search: each SQLite call lets go of the GIL and must win
        # it back, and with many threads doing so the waits (5 ms switch interval) add up to more than the
        # searches cost. Measured with 16 clients: see the issue-4 note.
        self._readers = anyio.CapacityLimiter(SEARCH_THREADS)

    async def search(
        self,
        collection: str,
        *,
        query: str | None = None,
        vector: Sequence[float] | None = None,
        top_k: int = 10,
        ef_search: int | None = None,
        include: Sequence[str] = ("text", "metadata"),
        mode: Mode = "dense",
        filter: Any = None,
        fusion: Fusion | None = None,
        min_seq: int | None = None,
    ) -> SearchResult:
        handle = await self.replica.collection(collection, min_seq)
        self._check(handle, mode, query, vector, fusion)
        check_top_k(top_k, self.limits.max_top_k)
        if ef_search is not None:
            check_ef_search(ef_search, "ef_search")
        check_include(include, INCLUDABLE)
        node = filters.parse_filter(filter, limits=self.limits)
        if query is not None:
            check_text_length(query, field="query", max_chars=self.limits.max_text_chars)
            check_text(query, where="query", field="query")
        total_tokens, duration_ms = 0, 0.0
        query_vector: npt.NDArray[np.float32] | None = None
        if vector is not None:
            query_vector = check_vector(
                vector,
                dimension=handle.dimension,
                metric=handle.metric,
                collection=handle.name,
                where="query vector",
                field="vector",
            )
        elif mode != "keyword":
            assert query is not None  # _check enforces it, and a model
            assert handle.embedding_model is not None
            embedded = await self.router.embed(
                handle.embedding_model, [query], "query", lane="interactive", dimension=handle.dimension
            )
            query_vector = embedded.embeddings.vectors[0]
            total_tokens, duration_ms = embedded.embeddings.total_tokens, embedded.duration_ms
        fusion = fusion or Fusion()
        depth = fusion.candidates or max(MIN_HYBRID_CANDIDATES, top_k)

        def rank() -> list[_Ranked]:
            allowed = None if node is None else filters.labels(node, handle.metadata)
            if mode == "keyword":
                assert query is not None
                return self._keyword(handle, query, top_k, allowed)
            assert query_vector is not None
            if mode == "dense":
                return self._dense(handle, query_vector, top_k, ef_search, allowed)
            assert query is not None
            dense = self._dense(handle, query_vector, depth, ef_search, allowed)
            keyword = self._keyword(handle, query, depth, allowed)
            return _fuse(dense, keyword, fusion)[:top_k]

        def search_and_hydrate() -> list[SearchHit]:
            return self._hydrate(handle, rank(), set(include))

        # Always on a worker thread, never inline, even for a search with no SQL to do (no filter, no text):
        # measured on 10,000 x 384 (the fortunes, ef 64, 2 cores), the graph walk alone (p50 0.37-0.40 ms)
        # costs twice the hop (p50 0.17 ms), and hnswlib lets go of the GIL, so on a thread it overlaps
        # the loop's HTTP work instead of stalling it.
        hits = await anyio.to_thread.run_sync(search_and_hydrate, limiter=self._readers)
        return SearchResult(
            hits=hits,
            model=handle.embedding_model if mode != "keyword" else None,
            total_tokens=total_tokens,
            duration_ms=round(duration_ms, 3),
        )

    def _check(
        self,
        handle: OpenCollection,
        mode: str,
        query: str | None,
        vector: Sequence[float] | None,
        fusion: Fusion | None,
    ) -> None:
        if mode not in MODES:
            raise InvalidRequest(f"mode must be one of {', '.join(MODES)}, got '{mode}'", extra={"field": "mode"})
        if fusion is not None:
            if mode != "hybrid":
                raise InvalidRequest("fusion applies to mode 'hybrid' only", extra={"field": "fusion"})
            _check_fusion(fusion, self.limits.max_top_k)
        if mode == "dense":
            if (query is None) == (vector is None):
                raise InvalidRequest("give exactly one of query or vector", extra={"field": "query"})
        elif query is None:
            raise InvalidRequest(f"mode '{mode}' needs a query (the keywords)", extra={"field": "query"})
        if mode == "keyword" and vector is not None:
            raise InvalidRequest(
                "mode 'keyword' ranks texts by their words: leave out vector", extra={"field": "vector"}
            )
        if mode != "keyword" and vector is None and handle.embedding_model is None:
            raise InvalidRequest(
                f"collection '{handle.name}' has no embedding model: give a vector for the dense side",
                extra={"field": "vector" if mode == "hybrid" else "query"},
            )

    def _dense(
        self,
        handle: OpenCollection,
        query: npt.NDArray[np.float32],
        k: int,
        ef: int | None,
        allowed: npt.NDArray[np.int64] | None,
    ) -> list[_Ranked]:
        found = dense_search(handle, query, k, ef=ef, allowed=allowed, exact_max=self.exact_search_max)
        if self.recall is not None and found.plan == "graph" and ef in (None, handle.graph.params.ef_search):
            self.recall.offer(handle, query, k, found.labels)  # live recall telemetry: collections/recall.py
        return [
            _Ranked(label, score_of(handle.metric, distance), distance)
            for label, distance in zip(found.labels, found.distances, strict=True)
        ]

    @staticmethod
    def _keyword(handle: OpenCollection, query: str, k: int, allowed: npt.NDArray[np.int64] | None) -> list[_Ranked]:
        labels, scores = handle.keyword.search(query, k, allowed)
        return [_Ranked(label, score, None) for label, score in zip(labels, scores, strict=True)]

    def _hydrate(self, handle: OpenCollection, ranked: list[_Ranked], wanted: set[str]) -> list[SearchHit]:
        """Ids and metadata from the metadata mirror; text and vectors, which only the database holds, in one
        query and only when `include` asks for them."""
        labels = [hit.label for hit in ranked]
        held = handle.metadata.hits(labels, with_metadata="metadata" in wanted)
        with_text, with_vector = "text" in wanted, "vector" in wanted
        rows = (
            self.store.texts_by_label(handle.id, labels, with_text=with_text, with_vector=with_vector)
            if with_text or with_vector
            else None
        )
        hits = []
        for hit, found in zip(ranked, held, strict=True):
            text, vector = None, None
            if rows is not None:
                row = rows.get(hit.label)
                if row is None:  # deleted between the ranking and the read
                    continue
                text, vector = row
            if found is None:  # deleted: the mirror lets go of a label after the graph and the exact scan
                continue
            hits.append(
                SearchHit(
                    id=found[0],
                    score=hit.score,
                    distance=hit.distance,
                    text=text,
                    metadata=found[1],
                    vector=None if vector is None else vector.tolist(),
                )
            )
        return hits


def _fuse(dense: list[_Ranked], keyword: list[_Ranked], fusion: Fusion) -> list[_Ranked]:
    """Reciprocal-rank fusion; the distance is the dense side's where it ranked the document."""
    scores: dict[int, float] = {}
    distances: dict[int, float | None] = {}
    for ranking, weight in ((dense, fusion.dense_weight), (keyword, fusion.keyword_weight)):
        for rank, hit in enumerate(ranking, start=1):
            scores[hit.label] = scores.get(hit.label, 0.0) + weight / (fusion.k + rank)
            if hit.distance is not None or hit.label not in distances:
                distances[hit.label] = hit.distance
    order = sorted(scores, key=lambda label: (-scores[label], label))
    return [_Ranked(label, scores[label], distances[label]) for label in order]

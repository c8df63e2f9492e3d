"""Search: embed the query if it is text, k-NN on the collection's index, hydrate the hits from the rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import numpy as np
import numpy.typing as npt

from akidb.collections.service import CollectionService
from akidb.collections.validation import check_ef_search, check_text, check_top_k, check_vector
from akidb.embedding.pooling import fit_dimension
from akidb.embedding.router import EmbeddingRouter
from akidb.errors import InvalidRequest

INCLUDABLE = ("text", "metadata", "vector")
SEARCH_THREADS = 2


@dataclass(frozen=True, slots=True)
class SearchHit:
    id: str
    score: float
    distance: float
    text: str | None
    metadata: dict[str, Any] | None
    vector: list[float] | None


@dataclass(frozen=True, slots=True)
class SearchResult:
    hits: list[SearchHit]
    model: str | None
    total_tokens: int
    duration_ms: float


def score_of(metric: str, distance: float) -> float:
    return -distance if metric == "l2" else 1.0 - distance


class SearchService:
    def __init__(self, collections: CollectionService, router: EmbeddingRouter, *, max_top_k: int) -> None:
        self.collections = collections
        self.router = router
        self.max_top_k = max_top_k
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
    ) -> SearchResult:
        handle = self.collections.handle(collection)
        if (query is None) == (vector is None):
            raise InvalidRequest("give exactly one of query or vector", extra={"field": "query"})
        check_top_k(top_k, self.max_top_k)
        if ef_search is not None:
            check_ef_search(ef_search, "ef_search")
        unknown = [item for item in include if item not in INCLUDABLE]
        if unknown:
            raise InvalidRequest(
                f"include: '{unknown[0]}' is not one of {', '.join(INCLUDABLE)}", extra={"field": "include"}
            )
        total_tokens, duration_ms = 0, 0.0
        if query is not None:
            check_text(query, where="query", field="query")
            if handle.embedding_model is None:
                raise InvalidRequest(
                    f"collection '{handle.name}' has no embedding model: search it with a vector",
                    extra={"field": "query"},
                )
            embedded = await self.router.embed(handle.embedding_model, [query], "query", lane="interactive")
            spec = self.router.spec(handle.embedding_model)
            query_vector: npt.NDArray[np.float32] = fit_dimension(
                embedded.embeddings.vectors, handle.dimension, spec.normalize
            )[0]
            total_tokens, duration_ms = embedded.embeddings.total_tokens, embedded.duration_ms
        else:
            assert vector is not None
            query_vector = check_vector(
                vector,
                dimension=handle.dimension,
                metric=handle.metric,
                collection=handle.name,
                where="query vector",
                field="vector",
            )
        wanted = set(include)

        def knn_and_hydrate() -> list[SearchHit]:
            labels, distances = handle.index.search(query_vector, top_k, ef_search)
            rows = self.collections.store.documents_by_label(
                handle.id,
                labels,
                with_text="text" in wanted,
                with_metadata="metadata" in wanted,
                with_vector="vector" in wanted,
            )
            hits = []
            for label, distance in zip(labels, distances, strict=True):
                row = rows.get(label)
                if row is None:  # deleted between the k-NN and the read
                    continue
                hits.append(
                    SearchHit(
                        id=row.id,
                        score=score_of(handle.metric, distance),
                        distance=distance,
                        text=row.text if "text" in wanted else None,
                        metadata=row.metadata if "metadata" in wanted else None,
                        vector=row.vector.tolist() if row.vector is not None else None,
                    )
                )
            return hits

        hits = await anyio.to_thread.run_sync(knn_and_hydrate, limiter=self._readers)
        return SearchResult(
            hits=hits,
            model=handle.embedding_model,
            total_tokens=total_tokens,
            duration_ms=round(duration_ms, 3),
        )

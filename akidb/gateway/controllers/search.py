from __future__ import annotations

import msgspec
from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from msgspec import UNSET

from akidb.collections.search import Fusion, SearchService
from akidb.gateway.errors import error_responses
from akidb.gateway.schemas import SearchHit, SearchRequest, SearchResponse, Usage


class SearchController(Controller):
    path = "/api/v1/collections/{name:str}"
    tags = ("search",)

    @post("/search", status_code=200, operation_id="search", responses=error_responses(404, 409, 422, 429, 503))
    async def search(
        self, name: FromPath[str], data: JSONBody[SearchRequest], search_service: NamedDependency[SearchService]
    ) -> SearchResponse:
        result = await search_service.search(
            name,
            query=data.query,
            vector=data.vector,
            top_k=data.top_k,
            ef_search=data.ef_search,
            include=data.include,
            mode=data.mode,
            filter=data.filter,
            fusion=None if data.fusion is None else Fusion(**msgspec.structs.asdict(data.fusion)),
            min_seq=data.min_seq,
        )
        included = set(data.include)
        hits = [
            SearchHit(
                id=hit.id,
                score=hit.score,
                distance=hit.distance,
                text=hit.text if "text" in included else UNSET,
                metadata=hit.metadata if "metadata" in included and hit.metadata is not None else UNSET,
                vector=hit.vector if hit.vector is not None else UNSET,
            )
            for hit in result.hits
        ]
        return SearchResponse(
            results=hits,
            model=result.model,
            usage=Usage(total_tokens=result.total_tokens, duration_ms=result.duration_ms),
        )

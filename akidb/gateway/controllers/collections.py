from __future__ import annotations

from litestar import Controller, Response, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from msgspec import UNSET

from akidb.auth.keys import Principal
from akidb.collections.service import CollectionInfo, CollectionService
from akidb.errors import InvalidRequest
from akidb.gateway.access import require_visible
from akidb.gateway.errors import error_responses
from akidb.gateway.schemas import (
    SEQ_HEADER,
    Collection,
    CollectionCreate,
    CollectionList,
    CollectionPatch,
    HnswOut,
    RecallOut,
)
from akidb.storage.records import HnswParams


def to_wire(info: CollectionInfo) -> Collection:
    return Collection(
        name=info.name,
        embedding_model=info.embedding_model,
        dimension=info.dimension,
        metric=info.metric,
        hnsw=HnswOut(m=info.hnsw.m, ef_construction=info.hnsw.ef_construction, ef_search=info.hnsw.ef_search),
        metadata=info.metadata,
        document_count=info.document_count,
        created_at=info.created_at.isoformat(),
        updated_at=info.updated_at.isoformat(),
        seq=info.seq,
        applied_seq=info.applied_seq,
        recall=None
        if info.recall is None
        else RecallOut(
            estimate=round(info.recall.recall, 4),
            samples=info.recall.samples,
            ef_search=info.recall.ef_search,
            target=info.recall.target,
            ef_search_advice=info.recall.advice,
        ),
    )


class CollectionController(Controller):
    path = "/api/v1/collections"
    tags = ("collections",)

    @post("/", status_code=201, operation_id="createCollection", responses=error_responses(409, 422))
    async def create(
        self,
        data: JSONBody[CollectionCreate],
        collection_service: NamedDependency[CollectionService],
        principal: NamedDependency[Principal],
    ) -> Collection:
        require_visible(principal, data.name)
        kwargs = {} if data.embedding_model is UNSET else {"embedding_model": data.embedding_model}
        info = await collection_service.create(
            name=data.name,
            dimension=data.dimension,
            metric=data.metric,
            hnsw=HnswParams(data.hnsw.m, data.hnsw.ef_construction, data.hnsw.ef_search),
            metadata=data.metadata,
            **kwargs,
        )
        return to_wire(info)

    @get("/", operation_id="listCollections")
    async def list_all(
        self, collection_service: NamedDependency[CollectionService], principal: NamedDependency[Principal]
    ) -> CollectionList:
        """The collections the caller's key may see."""
        infos = await collection_service.list(visible=principal.sees)
        return CollectionList(collections=[to_wire(info) for info in infos])

    @get("/{name:str}", operation_id="getCollection", responses=error_responses(404))
    async def get_one(self, name: FromPath[str], collection_service: NamedDependency[CollectionService]) -> Collection:
        return to_wire(await collection_service.get(name))

    @patch("/{name:str}", operation_id="updateCollection", responses=error_responses(404, 422))
    async def update(
        self,
        name: FromPath[str],
        data: JSONBody[CollectionPatch],
        collection_service: NamedDependency[CollectionService],
    ) -> Collection:
        for field in ("name", "embedding_model", "dimension", "metric"):
            if getattr(data, field) is not UNSET:
                raise InvalidRequest(
                    f"{field} cannot be changed; only metadata and hnsw.ef_search can", extra={"field": field}
                )
        ef_search = None
        if data.hnsw is not UNSET:
            for field in ("m", "ef_construction"):
                if getattr(data.hnsw, field) is not UNSET:
                    raise InvalidRequest(
                        f"hnsw.{field} cannot be changed; only metadata and hnsw.ef_search can",
                        extra={"field": f"hnsw.{field}"},
                    )
            ef_search = None if data.hnsw.ef_search is UNSET else data.hnsw.ef_search
        metadata = None if data.metadata is UNSET else data.metadata
        return to_wire(await collection_service.update(name, metadata=metadata, ef_search=ef_search))

    @delete(
        "/{name:str}",
        status_code=204,
        operation_id="deleteCollection",
        responses=error_responses(404),
        response_headers=[SEQ_HEADER],
    )
    async def remove(
        self, name: FromPath[str], collection_service: NamedDependency[CollectionService]
    ) -> Response[None]:
        seq = await collection_service.delete(name)
        return Response(None, status_code=204, headers={SEQ_HEADER.name: str(seq)})

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated

from litestar import Controller, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from akidb.collections.documents import DocumentService
from akidb.gateway.errors import error_responses
from akidb.gateway.schemas import (
    SEQ_HEADER,
    CountRequest,
    CountResponse,
    DeleteRequest,
    DeleteResponse,
    Document,
    DocumentList,
    GetRequest,
    MinSeqQuery,
    UpsertRequest,
    UpsertResponse,
    Usage,
)
from akidb.storage.records import DocumentRecord


def _with_vector(include_vector: bool) -> tuple[str, ...]:
    """What the GET routes show: text and metadata always, the vector on request."""
    return ("text", "metadata", "vector") if include_vector else ("text", "metadata")


def to_wire(record: DocumentRecord, include: Collection[str]) -> Document:
    document = Document(id=record.id)
    if "text" in include:
        document.text = record.text
    if "metadata" in include:
        document.metadata = record.metadata
    if "vector" in include and record.vector is not None:
        document.vector = record.vector.tolist()
    return document


class DocumentController(Controller):
    path = "/api/v1/collections/{name:str}"
    tags = ("documents",)

    @post(
        "/upsert",
        status_code=200,
        operation_id="upsertDocuments",
        responses=error_responses(404, 409, 413, 422, 429, 503),
    )
    async def upsert(
        self, name: FromPath[str], data: JSONBody[UpsertRequest], document_service: NamedDependency[DocumentService]
    ) -> UpsertResponse:
        result = await document_service.upsert(name, data.documents)
        return UpsertResponse(
            seq=result.seq,
            ids=result.ids,
            inserted=result.inserted,
            updated=result.updated,
            embeddings_generated=result.embeddings_generated,
            model=result.model,
            usage=Usage(total_tokens=result.total_tokens, duration_ms=result.duration_ms),
        )

    @get("/documents/{doc_id:str}", operation_id="getDocument", responses=error_responses(404, 422))
    async def get_one(
        self,
        name: FromPath[str],
        doc_id: FromPath[str],
        document_service: NamedDependency[DocumentService],
        include_vector: FromQuery[bool] = False,
        min_seq: MinSeqQuery = None,
    ) -> Document:
        record = await document_service.get(name, doc_id, include_vector=include_vector, min_seq=min_seq)
        return to_wire(record, _with_vector(include_vector))

    @get("/documents", operation_id="listDocuments", responses=error_responses(404, 422))
    async def list_page(
        self,
        name: FromPath[str],
        document_service: NamedDependency[DocumentService],
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        cursor: FromQuery[str | None] = None,
        include_vector: FromQuery[bool] = False,
        min_seq: MinSeqQuery = None,
    ) -> DocumentList:
        page = await document_service.list(
            name, limit=limit, cursor=cursor, include_vector=include_vector, min_seq=min_seq
        )
        return DocumentList(
            documents=[to_wire(record, _with_vector(include_vector)) for record in page.documents],
            next_cursor=page.next_cursor,
        )

    @delete(
        "/documents/{doc_id:str}",
        status_code=204,
        operation_id="deleteDocument",
        responses=error_responses(404),
        response_headers=[SEQ_HEADER],
    )
    async def remove_one(
        self, name: FromPath[str], doc_id: FromPath[str], document_service: NamedDependency[DocumentService]
    ) -> Response[None]:
        seq = await document_service.delete_one(name, doc_id)
        return Response(None, status_code=204, headers={SEQ_HEADER.name: str(seq)})

    @post("/get", status_code=200, operation_id="getDocuments", responses=error_responses(404, 422))
    async def find(
        self, name: FromPath[str], data: JSONBody[GetRequest], document_service: NamedDependency[DocumentService]
    ) -> DocumentList:
        page = await document_service.find(
            name,
            ids=data.ids,
            filter=data.filter,
            limit=data.limit,
            cursor=data.cursor,
            include=data.include,
            min_seq=data.min_seq,
        )
        return DocumentList(
            documents=[to_wire(record, data.include) for record in page.documents], next_cursor=page.next_cursor
        )

    @post("/count", status_code=200, operation_id="countDocuments", responses=error_responses(404, 422))
    async def count(
        self, name: FromPath[str], data: JSONBody[CountRequest], document_service: NamedDependency[DocumentService]
    ) -> CountResponse:
        return CountResponse(count=await document_service.count(name, filter=data.filter, min_seq=data.min_seq))

    @post("/delete", status_code=200, operation_id="deleteDocuments", responses=error_responses(404, 422))
    async def remove_many(
        self, name: FromPath[str], data: JSONBody[DeleteRequest], document_service: NamedDependency[DocumentService]
    ) -> DeleteResponse:
        deleted, seq = await document_service.delete(name, ids=data.ids, filter=data.filter, dry_run=data.dry_run)
        return DeleteResponse(deleted=deleted, seq=seq, dry_run=data.dry_run)

"""Upserts that are all-or-nothing: validate, embed what has no vector, one transaction, then the index."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import anyio.to_thread
import numpy as np

from akidb.collections.service import CollectionHandle, CollectionService
from akidb.collections.validation import DocumentInput, PreparedDocument, prepare_documents
from akidb.embedding.pooling import fit_dimension
from akidb.embedding.router import EmbeddingRouter
from akidb.errors import InvalidRequest, NotFound
from akidb.storage.repositories import DocumentRecord, NewDocument

MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class UpsertResult:
    ids: list[str]
    inserted: int
    updated: int
    embeddings_generated: bool
    model: str | None
    total_tokens: int
    duration_ms: float


@dataclass(frozen=True, slots=True)
class DocumentPage:
    documents: list[DocumentRecord]
    next_cursor: str | None


def _encode_cursor(doc_id: str) -> str:
    return base64.urlsafe_b64encode(doc_id.encode("utf-8")).decode("ascii")


def _decode_cursor(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor.encode("ascii")).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        raise InvalidRequest("cursor is not one this server handed out", extra={"field": "cursor"}) from None


class DocumentService:
    def __init__(self, collections: CollectionService, router: EmbeddingRouter, *, max_documents: int) -> None:
        self.collections = collections
        self.router = router
        self.max_documents = max_documents

    async def upsert(self, collection: str, documents: Sequence[DocumentInput]) -> UpsertResult:
        handle = self.collections.handle(collection)
        prepared = await anyio.to_thread.run_sync(self._prepare, handle, documents)
        to_embed = [row for row, doc in enumerate(prepared) if doc.vector is None]
        total_tokens, duration_ms = 0, 0.0
        if to_embed:
            assert handle.embedding_model is not None  # prepare_documents enforces it
            result = await self.router.embed(
                handle.embedding_model, [prepared[row].text or "" for row in to_embed], "document"
            )
            spec = self.router.spec(handle.embedding_model)
            vectors = fit_dimension(result.embeddings.vectors, handle.dimension, spec.normalize)
            for row, vector in zip(to_embed, vectors, strict=True):
                prepared[row].vector = vector
            total_tokens, duration_ms = result.embeddings.total_tokens, result.duration_ms
        ids, inserted, updated = await anyio.to_thread.run_sync(self._write, handle, prepared)
        return UpsertResult(
            ids=ids,
            inserted=inserted,
            updated=updated,
            embeddings_generated=bool(to_embed),
            model=handle.embedding_model,
            total_tokens=total_tokens,
            duration_ms=round(duration_ms, 3),
        )

    def _prepare(self, handle: CollectionHandle, documents: Sequence[DocumentInput]) -> list[PreparedDocument]:
        return prepare_documents(
            documents,
            collection=handle.name,
            dimension=handle.dimension,
            metric=handle.metric,
            has_model=handle.embedding_model is not None,
            max_documents=self.max_documents,
        )

    def _write(self, handle: CollectionHandle, prepared: list[PreparedDocument]) -> tuple[list[str], int, int]:
        rows = [
            NewDocument(
                id=doc.id if doc.id is not None else str(uuid.uuid4()),
                text=doc.text,
                metadata=doc.metadata,
                vector=doc.vector if doc.vector is not None else np.empty(0, np.float32),
            )
            for doc in prepared
        ]
        vectors = np.stack([row.vector for row in rows])
        with handle.write_lock:
            if handle.dropped:
                raise NotFound(f"collection '{handle.name}' was deleted")
            outcome = self.collections.store.upsert_documents(handle.id, rows)
            handle.index.upsert(outcome.labels, vectors, is_new=outcome.is_new, seq=outcome.last_seq)
        return [row.id for row in rows], outcome.inserted, outcome.updated

    async def get(self, collection: str, doc_id: str, *, include_vector: bool) -> DocumentRecord:
        handle = self.collections.handle(collection)
        return await anyio.to_thread.run_sync(
            lambda: self.collections.store.get_document(handle.id, doc_id, with_vector=include_vector)
        )

    async def list(self, collection: str, *, limit: int, cursor: str | None, include_vector: bool) -> DocumentPage:
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}, got {limit}", extra={"field": "limit"})
        handle = self.collections.handle(collection)
        after = _decode_cursor(cursor) if cursor else None
        rows = await anyio.to_thread.run_sync(
            lambda: self.collections.store.list_documents(
                handle.id, after_id=after, limit=limit + 1, with_vector=include_vector
            )
        )
        next_cursor = _encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
        return DocumentPage(documents=rows[:limit], next_cursor=next_cursor)

    async def delete(self, collection: str, ids: Sequence[str]) -> int:
        handle = self.collections.handle(collection)

        def remove() -> int:
            with handle.write_lock:
                if handle.dropped:
                    raise NotFound(f"collection '{handle.name}' was deleted")
                outcome = self.collections.store.delete_documents(handle.id, ids)
                handle.index.delete(outcome.labels, seq=outcome.last_seq)
            return len(outcome.labels)

        return await anyio.to_thread.run_sync(remove)

    async def delete_one(self, collection: str, doc_id: str) -> None:
        if await self.delete(collection, [doc_id]) == 0:
            raise NotFound(f"document '{doc_id}' does not exist in collection '{collection}'")

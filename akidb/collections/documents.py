"""Documents: all-or-nothing upserts (validate, embed what has no vector, one transaction, then every derived
structure), reads by id or filter in id order, counts, and deletes by ids and/or filter."""

from __future__ import annotations

import base64
import binascii
import bisect
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import numpy as np

from akidb.collections import filters
from akidb.collections.replica import Replica
from akidb.collections.validation import (
    DEFAULT_LIMITS,
    DocumentInput,
    PreparedDocument,
    check_ids,
    check_include,
    prepare_documents,
)
from akidb.config import LimitsSettings
from akidb.embedding.router import EmbeddingRouter
from akidb.errors import InvalidRequest, NotFound
from akidb.storage.collection import OpenCollection
from akidb.storage.records import DocumentRecord, NewDocument
from akidb.storage.repositories import Store

MAX_PAGE = 1000
DOCUMENT_FIELDS = ("text", "metadata", "vector")


@dataclass(frozen=True, slots=True)
class UpsertResult:
    seq: int  # the collection's seq once this write is applied: a read with min_seq=seq sees it anywhere
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
        after = base64.urlsafe_b64decode(cursor.encode("ascii")).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        after = "\x00"
    if "\x00" in after:  # no id holds NUL, and PostgreSQL cannot compare with one
        raise InvalidRequest("cursor is not one this server handed out", extra={"field": "cursor"})
    return after


class DocumentService:
    def __init__(
        self,
        store: Store,
        replica: Replica,
        router: EmbeddingRouter,
        *,
        limits: LimitsSettings = DEFAULT_LIMITS,
    ) -> None:
        self.store = store
        self.replica = replica
        self.router = router
        # Documents per upsert, characters per text, ids per get/delete and the filter's size: all checked
        # before anything is embedded or written.
        self.limits = limits

    async def upsert(self, collection: str, documents: Sequence[DocumentInput]) -> UpsertResult:
        handle = await self.replica.collection(collection)
        prepared = await anyio.to_thread.run_sync(self._prepare, handle, documents)
        to_embed = [row for row, doc in enumerate(prepared) if doc.vector is None]
        total_tokens, duration_ms = 0, 0.0
        if to_embed:
            assert handle.embedding_model is not None  # prepare_documents enforces it
            result = await self.router.embed(
                handle.embedding_model,
                [prepared[row].text or "" for row in to_embed],
                "document",
                dimension=handle.dimension,
            )
            for row, vector in zip(to_embed, result.embeddings.vectors, strict=True):
                prepared[row].vector = vector
            total_tokens, duration_ms = result.embeddings.total_tokens, result.duration_ms
        ids, inserted, updated, seq = await anyio.to_thread.run_sync(self._write, handle, prepared)
        return UpsertResult(
            seq=seq,
            ids=ids,
            inserted=inserted,
            updated=updated,
            embeddings_generated=bool(to_embed),
            model=handle.embedding_model,
            total_tokens=total_tokens,
            duration_ms=round(duration_ms, 3),
        )

    def _prepare(self, handle: OpenCollection, documents: Sequence[DocumentInput]) -> list[PreparedDocument]:
        return prepare_documents(
            documents,
            collection=handle.name,
            dimension=handle.dimension,
            metric=handle.metric,
            has_model=handle.embedding_model is not None,
            max_documents=self.limits.max_documents_per_upsert,
            max_text_chars=self.limits.max_text_chars,
        )

    def _write(self, handle: OpenCollection, prepared: list[PreparedDocument]) -> tuple[list[str], int, int, int]:
        rows = [
            NewDocument(
                id=doc.id if doc.id is not None else str(uuid.uuid4()),
                text=doc.text,
                metadata=doc.metadata,
                vector=doc.vector if doc.vector is not None else np.empty(0, np.float32),
            )
            for doc in prepared
        ]
        outcome = handle.upsert(self.store, rows)
        return [row.id for row in rows], outcome.inserted, outcome.updated, outcome.last_seq

    async def get(
        self, collection: str, doc_id: str, *, include_vector: bool, min_seq: int | None = None
    ) -> DocumentRecord:
        handle = await self.replica.collection(collection, min_seq)
        if "\x00" in doc_id:  # no id holds NUL (upserts refuse it), and PostgreSQL cannot even compare with one
            raise NotFound(f"document '{doc_id}' does not exist in collection '{collection}'")
        return await anyio.to_thread.run_sync(
            lambda: self.store.get_document(handle.id, doc_id, with_vector=include_vector)
        )

    async def list(
        self, collection: str, *, limit: int, cursor: str | None, include_vector: bool, min_seq: int | None = None
    ) -> DocumentPage:
        include = ("text", "metadata", "vector") if include_vector else ("text", "metadata")
        return await self.find(collection, limit=limit, cursor=cursor, include=include, min_seq=min_seq)

    async def find(
        self,
        collection: str,
        *,
        ids: Sequence[str] | None = None,
        filter: Any = None,
        limit: int = 100,
        cursor: str | None = None,
        include: Sequence[str] = ("text", "metadata"),
        min_seq: int | None = None,
    ) -> DocumentPage:
        """Documents by ids and/or filter (AND), in id order by code point, a page at a time."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}, got {limit}", extra={"field": "limit"})
        check_include(include, DOCUMENT_FIELDS)
        check_ids(ids, self.limits.max_ids_per_request)
        node = filters.parse_filter(filter, limits=self.limits)
        handle = await self.replica.collection(collection, min_seq)
        after = _decode_cursor(cursor) if cursor else None
        wanted = {"with_text": "text" in include, "with_metadata": "metadata" in include}
        with_vector = "vector" in include

        def read() -> list[DocumentRecord]:
            if node is None and ids is None:
                return self.store.list_documents(handle.id, after_id=after, limit=limit + 1, with_vector=with_vector)
            chosen = sorted(filters.select(node, handle.metadata, ids=ids).ids)
            start = bisect.bisect_right(chosen, after) if after is not None else 0
            page = chosen[start : start + limit + 1]
            rows = self.store.documents_by_id(handle.id, page, with_vector=with_vector, **wanted)
            by_id = {row.id: row for row in rows.values()}
            return [by_id[doc_id] for doc_id in page if doc_id in by_id]  # deleted meanwhile: skipped

        rows = await anyio.to_thread.run_sync(read)
        next_cursor = _encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
        return DocumentPage(documents=rows[:limit], next_cursor=next_cursor)

    async def count(self, collection: str, *, filter: Any = None, min_seq: int | None = None) -> int:
        node = filters.parse_filter(filter, limits=self.limits)
        handle = await self.replica.collection(collection, min_seq)
        if node is None:
            return handle.live_count
        return await anyio.to_thread.run_sync(lambda: filters.count(node, handle.metadata))

    async def delete(
        self, collection: str, *, ids: Sequence[str] | None = None, filter: Any = None, dry_run: bool = False
    ) -> tuple[int, int]:
        """Delete by ids and/or filter (AND); with neither, nothing: an empty request never empties a collection.
        Returns (how many went, or would go with dry_run; the collection's seq once it is applied)."""
        check_ids(ids, self.limits.max_ids_per_request)
        node = filters.parse_filter(filter, limits=self.limits)
        if ids is None and node is None:
            raise InvalidRequest(
                "delete needs ids or a non-empty filter (to empty a collection, delete the collection)",
                extra={"field": "filter"},
            )
        handle = await self.replica.collection(collection)

        def choose() -> list[str]:
            return filters.select(node, handle.metadata, ids=ids).ids

        if dry_run:
            return await anyio.to_thread.run_sync(lambda: (len(choose()), handle.applied_seq))
        outcome = await anyio.to_thread.run_sync(lambda: handle.delete(self.store, choose))
        return len(outcome.labels), outcome.last_seq

    async def delete_one(self, collection: str, doc_id: str) -> int:
        """Returns the collection's seq once the deletion is applied."""
        deleted, seq = await self.delete(collection, ids=[doc_id])
        if deleted == 0:
            raise NotFound(f"document '{doc_id}' does not exist in collection '{collection}'")
        return seq

"""Collections: create (dimension checked against the model), list, get, update, delete; their open indexes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import anyio.to_thread

from akidb.collections.recall import RecallEstimate, RecallEstimator
from akidb.collections.replica import Replica
from akidb.collections.validation import MAX_DIMENSION, METRICS, check_collection_name, check_ef_search, check_hnsw
from akidb.embedding.registry import ModelRegistry
from akidb.errors import DimensionMismatch, InvalidRequest, NotFound
from akidb.storage.records import CollectionRecord, HnswParams
from akidb.storage.repositories import Store

log = logging.getLogger(__name__)

DEFAULT_HNSW = HnswParams(m=16, ef_construction=200, ef_search=64)
_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    name: str
    embedding_model: str | None
    dimension: int
    metric: str
    hnsw: HnswParams
    metadata: dict[str, Any]
    document_count: int
    created_at: datetime
    updated_at: datetime
    seq: int  # the collection's last write, in the database
    applied_seq: int  # how far this process has applied it
    recall: RecallEstimate | None = None  # live recall telemetry (get only)


class CollectionService:
    # Set by the lifespan: the live recall estimates that `get` shows (None: no telemetry).
    recall: RecallEstimator | None = None

    def __init__(self, store: Store, replica: Replica, registry: ModelRegistry, *, default_model: str | None) -> None:
        self.store = store
        self.replica = replica
        self.collections = replica.collections
        self.registry = registry
        self.default_model = default_model

    # --- admin ---------------------------------------------------------------------------------------

    async def create(
        self,
        *,
        name: str,
        embedding_model: str | None = _UNSET,
        dimension: int | None = None,
        metric: str = "cosine",
        hnsw: HnswParams = DEFAULT_HNSW,
        metadata: dict[str, Any] | None = None,
    ) -> CollectionInfo:
        check_collection_name(name)
        if metric not in METRICS:
            raise InvalidRequest(
                f"metric must be one of {', '.join(METRICS)}, got '{metric}'", extra={"field": "metric"}
            )
        check_hnsw(hnsw.m, hnsw.ef_construction, hnsw.ef_search)
        model = self.default_model if embedding_model is _UNSET else embedding_model
        if embedding_model is _UNSET and model is None:
            raise InvalidRequest(
                "embedding_model: this server has no default model; pass null for a collection of vectors",
                extra={"field": "embedding_model"},
            )
        if model is not None:
            if model not in self.registry:
                raise InvalidRequest(
                    f"embedding_model '{model}' is not a known model (see GET /api/v1/models)",
                    extra={"field": "embedding_model"},
                )
            spec = self.registry.get(model)
            if dimension is None:
                dimension = spec.dimension
            elif not spec.supports_dimension(dimension):
                raise DimensionMismatch(
                    f"dimension {dimension} does not match model '{model}', which produces {spec.dimension}",
                    extra={"field": "dimension"},
                )
        elif dimension is None:
            raise InvalidRequest("dimension is required when embedding_model is null", extra={"field": "dimension"})
        if not 1 <= dimension <= MAX_DIMENSION:
            raise InvalidRequest(
                f"dimension must be between 1 and {MAX_DIMENSION}, got {dimension}", extra={"field": "dimension"}
            )

        def create_and_open() -> CollectionInfo:
            record = self.store.create_collection(
                name=name,
                embedding_model=model,
                dimension=dimension,
                metric=metric,
                hnsw=hnsw,
                metadata=metadata or {},
            )
            self.collections.open(record)
            return self._info(record, document_count=0, applied_seq=record.last_seq)

        return await anyio.to_thread.run_sync(create_and_open)

    async def get(self, name: str) -> CollectionInfo:
        def read() -> CollectionInfo:
            record = self.store.get_collection(name)
            info = self._info(
                record, document_count=self.store.count_documents(record.id), applied_seq=self._applied(record)
            )
            return info if self.recall is None else replace(info, recall=self.recall.estimate(record.id))

        return await anyio.to_thread.run_sync(read)

    def _applied(self, record: CollectionRecord) -> int:
        try:
            handle = self.collections.get(record.name)
        except NotFound:
            return 0  # not opened here yet
        return handle.applied_seq if handle.id == record.id else 0

    async def list(self, visible: Callable[[str], bool] = lambda _: True) -> list[CollectionInfo]:
        """The collections whose names pass `visible` (what the caller's key may see)."""

        def read() -> list[CollectionInfo]:
            return [
                self._info(
                    record, document_count=self.store.count_documents(record.id), applied_seq=self._applied(record)
                )
                for record in self.store.list_collections()
                if visible(record.name)
            ]

        return await anyio.to_thread.run_sync(read)

    async def update(self, name: str, *, metadata: dict[str, Any] | None, ef_search: int | None) -> CollectionInfo:
        if ef_search is not None:
            check_ef_search(ef_search, "hnsw.ef_search")
        collection = await self.replica.collection(name)

        def apply(_: CollectionRecord) -> None:
            if ef_search is not None:
                collection.graph.set_ef_search(ef_search)

        def write() -> CollectionInfo:
            record = collection.write(
                lambda: self.store.update_collection(name, metadata=metadata, ef_search=ef_search), apply
            )
            return self._info(record, document_count=collection.live_count, applied_seq=collection.applied_seq)

        return await anyio.to_thread.run_sync(write)

    async def delete(self, name: str) -> int:
        """Returns the deleted collection's last seq."""
        await self.replica.collection(name)
        record = await anyio.to_thread.run_sync(self.collections.drop, name)
        return record.last_seq

    @staticmethod
    def _info(record: CollectionRecord, *, document_count: int, applied_seq: int) -> CollectionInfo:
        return CollectionInfo(
            name=record.name,
            embedding_model=record.embedding_model,
            dimension=record.dimension,
            metric=record.metric,
            hnsw=record.hnsw,
            metadata=record.metadata,
            document_count=document_count,
            created_at=record.created_at,
            updated_at=record.updated_at,
            seq=record.last_seq,
            applied_seq=applied_seq,
        )

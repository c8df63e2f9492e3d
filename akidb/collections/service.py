"""Collections: create (dimension checked against the model), list, get, update, delete; their open indexes."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio.to_thread

from akidb.collections.validation import METRICS, check_collection_name, check_ef_search, check_hnsw
from akidb.embedding.registry import ModelRegistry
from akidb.errors import DimensionMismatch, InvalidRequest, NotFound
from akidb.storage.index import DEFAULT_EXACT_MAX, HnswIndex, open_index, remove_index_files
from akidb.storage.repositories import CollectionRecord, HnswParams, Store

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


class CollectionHandle:
    """An open collection: its fixed shape, its index, and the lock that orders its writes."""

    def __init__(self, record: CollectionRecord, index: HnswIndex, index_dir: Path) -> None:
        self.id = record.id
        self.name = record.name
        self.embedding_model = record.embedding_model
        self.dimension = record.dimension
        self.metric = record.metric
        self.index = index
        self.index_dir = index_dir
        # Held across the database commit and the index update, so the index applies writes in seq order.
        self.write_lock = threading.Lock()
        self.dropped = False


class CollectionService:
    def __init__(
        self,
        store: Store,
        registry: ModelRegistry,
        index_root: Path,
        *,
        default_model: str | None,
        exact_search_max: int = DEFAULT_EXACT_MAX,
    ) -> None:
        self.store = store
        self.registry = registry
        self.index_root = index_root
        self.default_model = default_model
        self.exact_search_max = exact_search_max
        self._handles: dict[str, CollectionHandle] = {}
        self._handles_lock = threading.Lock()

    # --- lifecycle -----------------------------------------------------------------------------------

    def open_all(self) -> None:
        """Blocking: open every collection's index, catching up from the database."""
        for record in self.store.list_collections():
            self._open(record)

    def _open(self, record: CollectionRecord) -> CollectionHandle:
        directory = self.index_root / record.uid
        index = open_index(
            self.store,
            record.id,
            directory,
            dimension=record.dimension,
            metric=record.metric,
            params=record.hnsw,
            last_seq=record.last_seq,
            exact_max=self.exact_search_max,
        )
        handle = CollectionHandle(record, index, directory)
        with self._handles_lock:
            self._handles[record.name] = handle
        return handle

    def save_indexes(self, *, only_dirty: bool = True) -> int:
        """Blocking: checkpoint indexes; returns how many were written."""
        saved = 0
        for handle in list(self._handles.values()):
            saved += self.save_index(handle, only_dirty=only_dirty)
        return saved

    def save_index(self, handle: CollectionHandle, *, only_dirty: bool = True) -> int:
        with handle.write_lock:
            if handle.dropped or (only_dirty and not handle.index.dirty):
                return 0
            seq = handle.index.save(handle.index_dir)
            self.store.purge_tombstones(handle.id, seq)
        return 1

    def handle(self, name: str) -> CollectionHandle:
        handle = self._handles.get(name)
        if handle is None:
            raise NotFound(f"collection '{name}' does not exist")
        return handle

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
        if not 1 <= dimension <= 65536:
            raise InvalidRequest(
                f"dimension must be between 1 and 65536, got {dimension}", extra={"field": "dimension"}
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
            self._open(record)
            return self._info(record, document_count=0)

        return await anyio.to_thread.run_sync(create_and_open)

    async def get(self, name: str) -> CollectionInfo:
        def read() -> CollectionInfo:
            record = self.store.get_collection(name)
            return self._info(record, document_count=self.store.count_documents(record.id))

        return await anyio.to_thread.run_sync(read)

    async def list(self) -> list[CollectionInfo]:
        def read() -> list[CollectionInfo]:
            return [
                self._info(record, document_count=self.store.count_documents(record.id))
                for record in self.store.list_collections()
            ]

        return await anyio.to_thread.run_sync(read)

    async def update(self, name: str, *, metadata: dict[str, Any] | None, ef_search: int | None) -> CollectionInfo:
        if ef_search is not None:
            check_ef_search(ef_search, "hnsw.ef_search")
        handle = self.handle(name)

        def write() -> CollectionInfo:
            with handle.write_lock:
                record = self.store.update_collection(name, metadata=metadata, ef_search=ef_search)
                if ef_search is not None:
                    handle.index.set_ef_search(ef_search)
            return self._info(record, document_count=self.store.count_documents(record.id))

        return await anyio.to_thread.run_sync(write)

    async def delete(self, name: str) -> None:
        handle = self.handle(name)

        def drop() -> None:
            with handle.write_lock:
                self.store.delete_collection(name)
                handle.dropped = True
                with self._handles_lock:
                    if self._handles.get(name) is handle:
                        del self._handles[name]
                remove_index_files(handle.index_dir)

        await anyio.to_thread.run_sync(drop)

    @staticmethod
    def _info(record: CollectionRecord, *, document_count: int) -> CollectionInfo:
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
        )

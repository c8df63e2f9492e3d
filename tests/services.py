"""The collection services wired as the gateway wires them, on a given engine, for tests below HTTP."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from akidb.collections.documents import DocumentService
from akidb.collections.replica import Replica
from akidb.collections.search import SearchService
from akidb.collections.service import CollectionService
from akidb.config import EmbeddingSettings, LimitsSettings, StorageSettings
from akidb.embedding.registry import default_registry
from akidb.embedding.router import EmbeddingRouter
from akidb.storage.changes import ChangeFeed
from akidb.storage.open_collections import OpenCollections
from akidb.storage.repositories import Store


@dataclass(frozen=True)
class Doc:
    """What DocumentService.upsert reads from each document."""

    id: str | None
    text: str | None
    vector: list[float] | None
    metadata: dict[str, Any] | None


@dataclass
class Services:
    store: Store
    router: EmbeddingRouter
    open_collections: OpenCollections
    replica: Replica
    collections: CollectionService
    documents: DocumentService
    search: SearchService

    def close(self) -> None:
        self.open_collections.close()
        self.router.close()


def build_services(
    engine: Engine, index_root: Path, *, exact_search_max: int = 5000, limits: LimitsSettings | None = None
) -> Services:
    """Services over the mock provider (deterministic vectors for the registry's models), every collection
    opened from the database as a restart would; `limits` as the server's [limits] (defaults if None)."""
    limits = limits or LimitsSettings()
    store = Store(engine)
    registry = default_registry()
    router = EmbeddingRouter(EmbeddingSettings(provider="mock"), registry, limits=limits)
    feed = ChangeFeed(engine)
    # The server's policy: new points appended below the rebuild ratio, deleted slots reused past it.
    open_collections = OpenCollections(
        store, feed, index_root, reuse_slots_from=StorageSettings().rebuild_deleted_ratio
    )
    replica = Replica(open_collections, feed)
    replica.start()
    return Services(
        store=store,
        router=router,
        open_collections=open_collections,
        replica=replica,
        collections=CollectionService(store, replica, registry, default_model=router.default_model),
        documents=DocumentService(store, replica, router, limits=limits),
        search=SearchService(store, replica, router, limits=limits, exact_search_max=exact_search_max),
    )

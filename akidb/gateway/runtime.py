"""The composed services, built once per app and handed to controllers by dependency injection."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from akidb.auth.service import KeyService
from akidb.collections.documents import DocumentService
from akidb.collections.replica import Replica
from akidb.collections.search import SearchService
from akidb.collections.service import CollectionService
from akidb.config import Settings
from akidb.embedding.registry import ModelRegistry, registry_from_settings
from akidb.embedding.router import EmbeddingRouter
from akidb.storage.changes import ChangeFeed
from akidb.storage.db import create_db_engine, migrate
from akidb.storage.keys import KeyStore
from akidb.storage.open_collections import OpenCollections
from akidb.storage.repositories import Store

log = logging.getLogger(__name__)


@dataclass
class Readiness:
    """Ready once the database is migrated, every collection is open and caught up with it, and the default
    model is warm; until then `reason` says what it waits for."""

    database: bool = False
    model: bool = False
    database_reason: str = "starting"
    model_reason: str = "starting"
    # Set when start-up cannot complete (the default model cannot run here): the server stops.
    fatal: str | None = None
    # How to stop the server then (the CLI sets uvicorn's should_exit); SIGTERM to this process if None.
    stop_server: Callable[[], None] | None = None

    @property
    def ready(self) -> bool:
        return self.database and self.model and self.fatal is None

    @property
    def reason(self) -> str:
        if self.fatal is not None:
            return self.fatal
        if not self.database:
            return self.database_reason
        return "ready" if self.model else self.model_reason


@dataclass
class Runtime:
    settings: Settings
    store: Store
    registry: ModelRegistry
    router: EmbeddingRouter
    open_collections: OpenCollections
    replica: Replica
    collections: CollectionService
    documents: DocumentService
    search: SearchService
    keys: KeyService
    readiness: Readiness = field(default_factory=Readiness)

    @classmethod
    def build(cls, settings: Settings, registry: ModelRegistry | None = None) -> Runtime:
        registry = registry or registry_from_settings(settings.embedding)
        engine = create_db_engine(
            settings.storage.resolved_url,
            busy_timeout_ms=settings.storage.sqlite_busy_timeout_ms,
            synchronous=settings.storage.sqlite_synchronous,
        )
        store = Store(engine)
        feed = ChangeFeed(engine)
        router = EmbeddingRouter(settings.embedding, registry, limits=settings.limits)
        open_collections = OpenCollections(
            store, feed, settings.storage.index_dir, reuse_slots_from=settings.storage.rebuild_deleted_ratio
        )
        storage = settings.storage
        replica = Replica(
            open_collections,
            feed,
            follow_interval_ms=storage.follow_interval_ms,
            consistency_wait_ms=storage.consistency_wait_ms,
            timeout_s=storage.replica_timeout_s,
        )
        return cls(
            settings=settings,
            store=store,
            registry=registry,
            router=router,
            open_collections=open_collections,
            replica=replica,
            collections=CollectionService(store, replica, registry, default_model=router.default_model),
            documents=DocumentService(store, replica, router, limits=settings.limits),
            keys=KeyService(KeyStore(engine), admin_key=settings.auth.admin_key, cache_ms=settings.auth.key_cache_ms),
            search=SearchService(
                store,
                replica,
                router,
                limits=settings.limits,
                exact_search_max=settings.storage.exact_search_max_vectors,
            ),
        )

    def migrate(self) -> None:
        """Blocking: bring the database's schema to head."""
        self.readiness.database_reason = "migrating the database"
        migrate(self.store.engine)
        self.readiness.database_reason = "opening collections"

    def open_storage(self) -> None:
        """Blocking: open every collection, catch up with the database and report progress to it."""

        def progress(reason: str) -> None:
            self.readiness.database_reason = reason

        self.replica.start(progress)
        self.readiness.database = True

    def models_to_preload(self) -> list[str]:
        embedding = self.settings.embedding
        default = self.router.default_model
        if default is None or not embedding.preload:
            return []
        return list(dict.fromkeys([default, *embedding.preload_models]))

    def load_default_model(self) -> None:
        """Blocking: load and warm the default model and the configured preloads, so that no request
        pays for a load."""
        for model in self.models_to_preload():
            self.readiness.model_reason = f"loading model {model}"
            self.router.models.load(model)
        self.readiness.model = True

    def close(self) -> None:
        self.replica.stop()
        saved = self.open_collections.save_all()
        log.info("saved %d index checkpoints", saved)
        self.open_collections.close()
        self.router.close()
        self.store.engine.dispose()

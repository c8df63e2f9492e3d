"""create_app(settings) -> Litestar: the composition root."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

import anyio.to_thread
from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Schema
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController

from akidb import __version__
from akidb.config import Settings
from akidb.errors import AkidbError
from akidb.gateway.controllers.collections import CollectionController
from akidb.gateway.controllers.documents import DocumentController
from akidb.gateway.controllers.embed import EmbedController, OpenAIEmbeddingsController
from akidb.gateway.controllers.models import ModelController
from akidb.gateway.controllers.search import SearchController
from akidb.gateway.controllers.system import HealthController
from akidb.gateway.errors import EXCEPTION_HANDLERS
from akidb.gateway.middleware import request_scope_middleware
from akidb.gateway.runtime import Runtime
from akidb.gateway.schemas import request_structs

log = logging.getLogger("akidb")


class MetricsController(PrometheusController):
    path = "/metrics"


async def _save_periodically(runtime: Runtime) -> None:
    interval = runtime.settings.storage.index_save_interval_s
    while True:
        await asyncio.sleep(interval)
        try:
            await anyio.to_thread.run_sync(runtime.open_collections.save_all)
        except Exception:  # a failed checkpoint is retried; the database still holds everything
            log.exception("saving index checkpoints failed")


async def _load_model(runtime: Runtime) -> None:
    runtime.readiness.reason = "loading the default model"
    try:
        await anyio.to_thread.run_sync(runtime.load_default_model)
        runtime.readiness.reason = "ready"
    except Exception as exc:
        # A server whose default model cannot run here would never become ready: stop, saying why.
        detail = exc.detail if isinstance(exc, AkidbError) else repr(exc)
        runtime.readiness.reason = f"the default model failed to load: {detail}"
        runtime.readiness.fatal = runtime.readiness.reason
        log.error("stopping: %s", runtime.readiness.reason, exc_info=not isinstance(exc, AkidbError))
        if runtime.readiness.stop_server is not None:
            runtime.readiness.stop_server()
        else:
            signal.raise_signal(signal.SIGTERM)


def create_app(settings: Settings, runtime: Runtime | None = None) -> Litestar:
    runtime = runtime or Runtime.build(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        runtime.readiness.reason = "opening the database and indexes"
        await anyio.to_thread.run_sync(runtime.open_storage)
        # The model loads in the background: /health/live answers at once, /health/ready once it is warm.
        loader = asyncio.create_task(_load_model(runtime))
        saver = asyncio.create_task(_save_periodically(runtime))
        try:
            yield
        finally:
            for task in (loader, saver):
                task.cancel()
            for task in (loader, saver):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await anyio.to_thread.run_sync(runtime.close)

    prometheus = PrometheusConfig(app_name="akidb", prefix="akidb", group_path=True)

    def provide_runtime() -> Runtime:
        return runtime

    app = Litestar(
        route_handlers=[
            CollectionController,
            DocumentController,
            SearchController,
            EmbedController,
            OpenAIEmbeddingsController,
            ModelController,
            HealthController,
            MetricsController,
        ],
        dependencies={"runtime": Provide(provide_runtime, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        middleware=[prometheus.middleware, request_scope_middleware(settings.embedding.request_timeout_ms)],
        request_max_body_size=settings.server.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="AkiDB gateway",
            version=__version__,
            path="/schema",
            render_plugins=[JsonRenderPlugin(path=["/", "/openapi.json"]), SwaggerRenderPlugin(path="/swagger")],
        ),
    )
    _forbid_unknown_fields_in_schema(app)
    return app


def _forbid_unknown_fields_in_schema(app: Litestar) -> None:
    """Request Structs reject unknown fields; say so in the OpenAPI document, which Litestar does not."""
    schemas = app.openapi_schema.components.schemas or {}
    for struct in request_structs():
        component = schemas.get(struct.__name__)
        if isinstance(component, Schema):
            component.additional_properties = False

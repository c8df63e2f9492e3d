"""create_app(settings) -> Litestar: the composition root."""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Request
from litestar.config.cors import CORSConfig
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController

from akidb import __version__
from akidb.auth.keys import ANONYMOUS, Principal
from akidb.config import Settings
from akidb.gateway.access import AccessGuard, declare_rights
from akidb.gateway.controllers.collections import CollectionController
from akidb.gateway.controllers.documents import DocumentController
from akidb.gateway.controllers.embed import EmbedController, OpenAIEmbeddingsController
from akidb.gateway.controllers.keys import KeyController
from akidb.gateway.controllers.models import ModelController
from akidb.gateway.controllers.search import SearchController
from akidb.gateway.controllers.system import HealthController
from akidb.gateway.errors import EXCEPTION_HANDLERS
from akidb.gateway.lifespan import lifespan
from akidb.gateway.middleware import request_scope_middleware
from akidb.gateway.openapi import tell_the_truth
from akidb.gateway.runtime import Runtime


class MetricsController(PrometheusController):
    path = "/metrics"


def _principal(request: Request[Any, Any, Any]) -> Principal:
    """The caller, as the access guard established it."""
    principal = request.scope.get("auth")
    return principal if isinstance(principal, Principal) else ANONYMOUS


def _dependencies(runtime: Runtime) -> dict[str, Provide]:
    """Each controller asks for the service it uses, by name."""

    def constant(value: object) -> Provide:
        return Provide(lambda: value, sync_to_thread=False, use_cache=True)

    return {
        "collection_service": constant(runtime.collections),
        "document_service": constant(runtime.documents),
        "search_service": constant(runtime.search),
        "key_service": constant(runtime.keys),
        "embedding_router": constant(runtime.router),
        "model_registry": constant(runtime.registry),
        "readiness": constant(runtime.readiness),
        "principal": Provide(_principal, sync_to_thread=False),
    }


def create_app(settings: Settings, runtime: Runtime | None = None) -> Litestar:
    runtime = runtime or Runtime.build(settings)
    prometheus = PrometheusConfig(app_name="akidb", prefix="akidb", group_path=True)
    cors = settings.server.cors_origins
    app = Litestar(
        route_handlers=[
            CollectionController,
            DocumentController,
            SearchController,
            EmbedController,
            OpenAIEmbeddingsController,
            ModelController,
            KeyController,
            HealthController,
            MetricsController,
        ],
        dependencies=_dependencies(runtime),
        guards=[AccessGuard(settings.auth, runtime.keys)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan(runtime)],
        middleware=[prometheus.middleware, request_scope_middleware(settings.embedding.request_timeout_ms)],
        request_max_body_size=settings.limits.max_body_bytes,
        cors_config=CORSConfig(allow_origins=cors, allow_headers=["*"]) if cors else None,
        openapi_config=OpenAPIConfig(
            title="AkiDB gateway",
            version=__version__,
            path="/schema",
            render_plugins=[JsonRenderPlugin(path=["/", "/openapi.json"]), SwaggerRenderPlugin(path="/swagger")],
        ),
    )
    declare_rights(app)
    tell_the_truth(app, settings)
    return app

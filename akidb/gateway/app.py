"""create_app(settings) -> Litestar: the composition root."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from litestar import Litestar, Request, get
from litestar.config.cors import CORSConfig
from litestar.di import Provide
from litestar.enums import MediaType
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from litestar.router import Router
from litestar.static_files import create_static_files_router

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
from akidb.gateway.controllers.system import HealthController, LimitsController
from akidb.gateway.errors import EXCEPTION_HANDLERS
from akidb.gateway.lifespan import lifespan
from akidb.gateway.middleware import request_scope_middleware
from akidb.gateway.openapi import tell_the_truth
from akidb.gateway.runtime import Runtime
from akidb.gateway.vectors_json import TYPE_ENCODERS


class MetricsController(PrometheusController):
    path = "/metrics"


# The interactive API page loads Swagger UI (5.x, which reads OpenAPI 3.1) from the files the swagger-ui-py
# package ships, served here, never from a CDN: it works with no internet.
ASSETS = "/schema/assets"


def _swagger_ui_dist() -> Path:
    """The folder of Swagger UI's dist files in the swagger-ui-py package (swagger_ui/static)."""
    static = Path(str(files("swagger_ui"))) / "static"
    if not (static / "swagger-ui-bundle.js").is_file():
        raise RuntimeError(f"swagger-ui-py is installed without Swagger UI's files (looked in {static})")
    return static


def _api_page() -> tuple[SwaggerRenderPlugin, Router, HTTPRouteHandler]:
    """The Swagger UI page (/schema/swagger, and /docs), the files it loads, and the /docs handler."""
    swagger = SwaggerRenderPlugin(
        path="/swagger",
        js_url=f"{ASSETS}/swagger-ui-bundle.js",
        css_url=f"{ASSETS}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{ASSETS}/favicon-32x32.png'>",
    )
    assets = create_static_files_router(path=ASSETS, directories=[_swagger_ui_dist()], name="swagger-ui-assets")

    @get("/docs", media_type=MediaType.HTML, include_in_schema=False, sync_to_thread=False)
    def docs(request: Request[Any, Any, Any]) -> bytes:
        return swagger.render(request, request.app.openapi_schema.to_schema())

    return swagger, assets, docs


def _principal(request: Request[Any, Any, Any]) -> Principal:
    """The caller, as the access guard established it."""
    principal = request.scope.get("auth")
    return principal if isinstance(principal, Principal) else ANONYMOUS


def _dependencies(runtime: Runtime, settings: Settings) -> dict[str, Provide]:
    """Each controller asks for the service it uses, by name."""

    def constant(value: object) -> Provide:
        return Provide(lambda: value, sync_to_thread=False, use_cache=True)

    return {
        "collection_service": constant(runtime.collections),
        "document_service": constant(runtime.documents),
        "search_service": constant(runtime.search),
        "key_service": constant(runtime.keys),
        "embedding_router": constant(runtime.router),
        "model_loader": constant(runtime.router.models),
        "model_registry": constant(runtime.registry),
        "readiness": constant(runtime.readiness),
        "limits": constant(settings.limits),
        "principal": Provide(_principal, sync_to_thread=False),
    }


def create_app(settings: Settings, runtime: Runtime | None = None) -> Litestar:
    runtime = runtime or Runtime.build(settings)
    prometheus = PrometheusConfig(app_name="akidb", prefix="akidb", group_path=True)
    cors = settings.server.cors_origins
    swagger, swagger_assets, docs = _api_page()
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
            LimitsController,
            MetricsController,
            swagger_assets,
            docs,
        ],
        dependencies=_dependencies(runtime, settings),
        guards=[AccessGuard(settings.auth, runtime.keys)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan(runtime)],
        middleware=[prometheus.middleware, request_scope_middleware(settings.embedding.request_timeout_ms)],
        request_max_body_size=settings.limits.max_body_bytes,
        type_encoders=TYPE_ENCODERS,
        cors_config=CORSConfig(allow_origins=cors, allow_headers=["*"]) if cors else None,
        openapi_config=OpenAPIConfig(
            title="AkiDB gateway",
            version=__version__,
            path="/schema",
            render_plugins=[JsonRenderPlugin(path=["/", "/openapi.json"]), swagger],
        ),
    )
    declare_rights(app)
    tell_the_truth(app, settings)
    return app

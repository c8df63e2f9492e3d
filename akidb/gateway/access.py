"""Access control: the one table of the right each route needs, and the guard that enforces it.

Every route of the application must appear in RIGHTS (create_app refuses to build otherwise, and a test
walks the real route list). OPTIONS (CORS preflight, which carries no credentials) is open everywhere.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Any

import anyio.to_thread
from litestar import Litestar
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.routes import HTTPRoute

from akidb.auth.keys import ANONYMOUS, Principal, Role
from akidb.auth.service import KeyService
from akidb.config import AuthSettings
from akidb.errors import Forbidden, Unauthorized, collection_not_found

log = logging.getLogger("akidb.auth")


class Right(StrEnum):
    PUBLIC = "public"  # no key, ever
    METRICS = "metrics"  # a read key, or none with auth.public_metrics
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"  # admin role; a collection-limited admin key only within its collections
    SERVER = "server"  # admin role over the whole server: keys, model loading (no collection limit)


_COLLECTION = "/api/v1/collections/{name}"
RIGHTS: dict[str, Right] = {
    "GET /health/live": Right.PUBLIC,
    "GET /health/ready": Right.PUBLIC,
    "GET /metrics": Right.METRICS,
    "GET /schema": Right.PUBLIC,
    "GET /schema/openapi.json": Right.PUBLIC,
    "GET /schema/swagger": Right.PUBLIC,
    "GET /schema/oauth2-redirect.html": Right.PUBLIC,
    "GET /schema/{path}": Right.PUBLIC,
    # Swagger UI's files for the page above (from the swagger-ui-py package), and the page at /docs.
    "GET /schema/assets/{file_path}": Right.PUBLIC,
    "HEAD /schema/assets/{file_path}": Right.PUBLIC,
    "GET /docs": Right.PUBLIC,
    "POST /api/v1/collections": Right.ADMIN,
    "GET /api/v1/collections": Right.READ,
    f"GET {_COLLECTION}": Right.READ,
    f"PATCH {_COLLECTION}": Right.ADMIN,
    f"DELETE {_COLLECTION}": Right.ADMIN,
    f"POST {_COLLECTION}/upsert": Right.WRITE,
    f"GET {_COLLECTION}/documents": Right.READ,
    f"GET {_COLLECTION}/documents/{{doc_id}}": Right.READ,
    f"DELETE {_COLLECTION}/documents/{{doc_id}}": Right.WRITE,
    f"POST {_COLLECTION}/get": Right.READ,
    f"POST {_COLLECTION}/count": Right.READ,
    f"POST {_COLLECTION}/delete": Right.WRITE,
    f"POST {_COLLECTION}/search": Right.READ,
    "POST /api/v1/embed": Right.READ,
    "POST /v1/embeddings": Right.READ,
    "GET /api/v1/models": Right.READ,
    "GET /api/v1/models/{model_id}": Right.READ,
    "POST /api/v1/models/{model_id}/load": Right.SERVER,
    "POST /api/v1/models/{model_id}/unload": Right.SERVER,
    "GET /api/v1/limits": Right.READ,
    "POST /api/v1/keys": Right.SERVER,
    "GET /api/v1/keys": Right.SERVER,
    "DELETE /api/v1/keys/{key_id}": Right.SERVER,
}
_ROLE_OF: dict[Right, Role] = {
    Right.METRICS: "read",
    Right.READ: "read",
    Right.WRITE: "write",
    Right.ADMIN: "admin",
    Right.SERVER: "admin",
}
_RIGHT_OPT = "akidb_right"


def route_keys(app: Litestar) -> list[tuple[str, BaseRouteHandler]]:
    """("METHOD /path/{param}", handler) for every route of the app, OPTIONS aside."""
    found: list[tuple[str, BaseRouteHandler]] = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            for method in sorted(handler.http_methods):
                if method != "OPTIONS":
                    found.append((f"{method} {route.path_format}", handler))
    return found


def declare_rights(app: Litestar) -> None:
    """Attach each route's right to its handler; a route missing from RIGHTS stops the app from building."""
    missing = []
    for key, handler in route_keys(app):
        if key in RIGHTS:
            handler.opt[_RIGHT_OPT] = RIGHTS[key]
        else:
            missing.append(key)
    if missing:
        raise RuntimeError(f"routes without a declared right (add them to RIGHTS in {__name__}): {missing}")


def _credential(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    authorization = connection.headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = connection.headers.get("x-api-key")
    return api_key.strip() if api_key and api_key.strip() else None


class AccessGuard:
    """Litestar guard for the whole app: who is calling (401), may they (403), and may they see the
    collection named in the path (404, as if it did not exist)."""

    def __init__(self, settings: AuthSettings, keys: KeyService) -> None:
        self.enabled = settings.enabled
        self.public_metrics = settings.public_metrics
        self.keys = keys

    async def __call__(self, connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        right = handler.opt.get(_RIGHT_OPT)
        if right is None:  # the automatic OPTIONS handlers
            return
        if not self.enabled or right is Right.PUBLIC or (right is Right.METRICS and self.public_metrics):
            connection.scope["auth"] = ANONYMOUS
            return
        principal = await self._authenticate(connection)
        connection.scope["auth"] = principal
        name = connection.path_params.get("name")
        if name is not None and not principal.sees(name):
            raise collection_not_found(name)
        role = _ROLE_OF[right]
        if not principal.has(role):
            log.info(
                "refused %s %s to %s: needs %s",
                connection.scope.get("method"),
                connection.url.path,
                principal.describe(),
                role,
            )
            raise Forbidden(f"this route needs a key with the {role} role; {principal.describe()} has {principal.role}")
        if right is Right.SERVER and principal.scoped:
            raise Forbidden(
                f"this route needs an admin key for the whole server; {principal.describe()} is limited to collections"
            )

    async def _authenticate(self, connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
        presented = _credential(connection)
        if presented is None:
            raise Unauthorized("this route needs an API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`")
        principal = self.keys.cached(presented)
        if principal is None:
            principal = await anyio.to_thread.run_sync(self.keys.lookup, presented)
        return principal


def require_visible(principal: Principal, name: str) -> None:
    """For routes that name a collection in the body (create): a limited key may only make its own."""
    if not principal.sees(name):
        raise Forbidden(
            f"{principal.describe()} is limited to collections {list(principal.collections or ())}; "
            f"it cannot create '{name}'"
        )

"""Make the OpenAPI document state what the server enforces, where Litestar's generator cannot know it.

Litestar derives the document from the wire Structs and the handlers' signatures; the rules the services
check (name pattern, ranges, limits, enums), the access control and the errors every route can answer with
are stated here, from the same constants and settings the services use, so the document cannot drift from
them. A field or operation named here that no longer exists stops the app from building.

`python -m akidb.gateway.openapi [FILE]` writes the document of a server with default settings (what
tests/openapi.json holds; `make openapi` regenerates it).
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
from litestar import Litestar
from litestar.openapi.spec import (
    Components,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    Reference,
    Schema,
    SecurityScheme,
)

from akidb.config import Settings
from akidb.gateway.access import RIGHTS, Right
from akidb.gateway.errors import error_responses
from akidb.gateway.middleware import TIMEOUT_HEADER
from akidb.gateway.openapi_requests import constrain_parameters, forbid_unknown_fields, state_constraints

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
PATH_NAMES = {
    "name": "collection",
    "doc_id": "document",
    "model_id": "model",
    "key_id": "API key",
}
# Every key has at least the read role, so only routes that need more can answer 403.
FORBIDDEN = {
    Right.WRITE: "The key is valid but lacks the write role",
    Right.ADMIN: "The key is valid but lacks the admin role (or, creating a collection, is limited to others)",
    Right.SERVER: "The key lacks the admin role, or is limited to collections: this route is for the whole server",
}
ERROR_BODY = "ErrorBody"
MODEL_UNAVAILABLE = (
    "The model cannot be loaded or run on this machine (extra.code model_unavailable): its files or its "
    "backend are missing, a state the operator must change"
)
CONFLICTS = {"createCollection": "A collection of that name already exists"}
NOT_CAUGHT_UP = (
    "this process had not applied min_seq within storage.consistency_wait_ms (extra.code not_caught_up); "
    "Retry-After says when to try again"
)
SECURITY_SCHEMES = {
    "bearer": SecurityScheme(
        type="http",
        scheme="bearer",
        description="An API key as `Authorization: Bearer <key>` (what OpenAI clients send)",
    ),
    "apiKey": SecurityScheme(
        type="apiKey",
        name="X-API-Key",
        security_scheme_in="header",
        description="An API key as `X-API-Key: <key>`",
    ),
}


def tell_the_truth(app: Litestar, settings: Settings) -> None:
    openapi = app.openapi_schema
    components = openapi.components
    schemas = components.schemas
    forbid_unknown_fields(schemas)
    state_constraints(schemas, settings)
    _declare_security(components)
    for path, method, operation in _operations(openapi.paths or {}):
        right = RIGHTS.get(f"{method.upper()} {path}")
        if right is None:
            raise RuntimeError(f"OpenAPI: {method.upper()} {path} has no right in akidb.gateway.access.RIGHTS")
        constrain_parameters(operation)
        _add_security(operation, right, settings)
        _add_responses(operation, right, settings, schemas)
    _describe_operations_routes(openapi.paths or {})


def _timeout_header() -> Parameter:
    return Parameter(
        name=TIMEOUT_HEADER.decode().title(),
        param_in="header",
        required=False,
        schema=Schema(type=OpenAPIType.NUMBER, exclusive_minimum=0),
        description="This request's deadline in milliseconds (default embedding.request_timeout_ms, 0: none); "
        "embedding work still queued when it passes is dropped and the answer is 503 deadline_exceeded. "
        "Not a positive number: 400",
    )


# --- access control ---------------------------------------------------------------------------------------


def _declare_security(components: Components) -> None:
    components.security_schemes = {**(components.security_schemes or {}), **SECURITY_SCHEMES}


def _needs_key(right: Right, settings: Settings) -> bool:
    if right is Right.PUBLIC:
        return False
    return not (right is Right.METRICS and settings.auth.public_metrics)


def _add_security(operation: Operation, right: Right, settings: Settings) -> None:
    """Every route that takes a key says how to send one; with auth off none is needed (the `{}`
    alternative), and a key sent anyway is ignored."""
    if not _needs_key(right, settings):
        operation.security = []
        return
    operation.security = [{name: []} for name in SECURITY_SCHEMES]
    if not settings.auth.enabled:
        operation.security.append({})


# --- responses --------------------------------------------------------------------------------------------


def _error(code: int, description: str | None = None, *, retry_after: bool = False) -> OpenAPIResponse:
    spec = error_responses(code)[code]
    headers: dict[str, OpenAPIHeader | Reference] = {}
    if code == 401:
        headers["WWW-Authenticate"] = OpenAPIHeader(schema=Schema(type=OpenAPIType.STRING), description="Bearer")
    if code == 429 or retry_after:
        headers["Retry-After"] = OpenAPIHeader(
            schema=Schema(type=OpenAPIType.INTEGER, minimum=1), description="Seconds to wait before sending it again"
        )
    return OpenAPIResponse(
        description=description or spec.description or "",
        content={"application/json": OpenAPIMediaType(schema=Reference(ref=f"#/components/schemas/{ERROR_BODY}"))},
        headers=headers or None,
    )


def _add_responses(operation: Operation, right: Right, settings: Settings, schemas: dict[str, Schema]) -> None:
    if ERROR_BODY not in schemas:
        raise RuntimeError(f"OpenAPI: the {ERROR_BODY} component is missing")
    responses = operation.responses if operation.responses is not None else {}
    operation.responses = responses
    declared = {int(code) for code in responses if code.isdigit() and int(code) >= 400}
    if 429 in declared or 503 in declared:  # embedding may run: the deadline header applies
        operation.parameters = [*(operation.parameters or []), _timeout_header()]
    parameters = [p for p in operation.parameters or () if isinstance(p, Parameter)]
    wanted: dict[int, str | None] = {}
    if operation.request_body is not None or parameters:
        wanted[400] = None
    if operation.request_body is not None:
        wanted[413] = None
    if settings.auth.enabled and _needs_key(right, settings):
        wanted[401] = None
        if right in FORBIDDEN:
            wanted[403] = FORBIDDEN[right]
    named = [PATH_NAMES[p.name] for p in parameters if p.param_in == "path" and p.name in PATH_NAMES]
    if named:
        wanted[404] = f"The {' or '.join(dict.fromkeys(named))} does not exist"
    elif 404 in declared:  # the embed routes: the body names the model
        wanted[404] = "The model does not exist"
    if 409 in declared:
        wanted[409] = CONFLICTS.get(operation.operation_id or "", MODEL_UNAVAILABLE)
    if _takes_min_seq(operation, parameters, schemas):
        # Only reads with min_seq answer 503 with Retry-After (the deadline's 503 has none).
        also = f"{error_responses(503)[503].description}; or " if 503 in declared else ""
        wanted[503] = also + NOT_CAUGHT_UP if also else NOT_CAUGHT_UP[0].upper() + NOT_CAUGHT_UP[1:]
    for code, description in wanted.items():
        # Litestar's own 400 entry lacks extra.code; a handler's 404 does not say what the path names.
        if code == 400 or description is not None or str(code) not in responses:
            responses[str(code)] = _error(code, description, retry_after=code == 503)
    for code in (401, 429):  # entries the handlers declared: add the headers
        if str(code) in responses:
            responses[str(code)] = _error(code, _description(responses[str(code)]))
    empty = responses.get("204")
    if isinstance(empty, OpenAPIResponse):
        empty.content = None  # Litestar gives a Response[None] a JSON body of null; a 204 has none
    operation.responses = dict(sorted(responses.items()))


def _takes_min_seq(operation: Operation, parameters: list[Parameter], schemas: dict[str, Schema]) -> bool:
    if any(p.name == "min_seq" for p in parameters):
        return True
    body = operation.request_body
    if body is None or isinstance(body, Reference):
        return False
    for media in (body.content or {}).values():
        ref = media.schema
        if isinstance(ref, Reference):
            schema = schemas.get(ref.ref.rsplit("/", 1)[-1])
            if schema is not None and "min_seq" in (schema.properties or {}):
                return True
    return False


def _description(response: OpenAPIResponse | Reference) -> str | None:
    return response.description if isinstance(response, OpenAPIResponse) else None


def _describe_operations_routes(paths: dict[str, Any]) -> None:
    """Routes Litestar cannot describe: the readiness 503 and the Prometheus text of /metrics."""
    ready = _operation(paths, "/health/ready", "get")
    responses = ready.responses if ready.responses is not None else {}
    ok = responses.get("200")
    if isinstance(ok, OpenAPIResponse):
        responses["503"] = OpenAPIResponse(
            description="Not ready yet (migrations, loading the default model) or stopping; detail says why",
            content=ok.content,
        )
    ready.responses = dict(sorted(responses.items()))
    metrics = _operation(paths, "/metrics", "get")
    metrics.operation_id = "metrics"
    metrics.summary = "Prometheus metrics"
    metrics.tags = ["operations"]
    metrics.description = (
        "The Prometheus text exposition format. Needs a key (any role) unless auth.public_metrics is on"
    )
    responses = metrics.responses if metrics.responses is not None else {}
    responses["200"] = OpenAPIResponse(
        description="The metrics, in the Prometheus text format",
        content={"text/plain": OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING))},
    )
    metrics.responses = dict(sorted(responses.items()))


def _operations(paths: dict[str, Any]) -> Iterator[tuple[str, str, Operation]]:
    for path, item in sorted(paths.items()):
        for method in METHODS:
            operation = getattr(item, method, None)
            if isinstance(operation, Operation):
                yield path, method, operation


def _operation(paths: dict[str, Any], path: str, method: str) -> Operation:
    operation = getattr(paths.get(path), method, None)
    if not isinstance(operation, Operation):
        raise RuntimeError(f"OpenAPI: {method.upper()} {path} is not in the document; update {__name__}")
    return operation


# --- the committed snapshot -------------------------------------------------------------------------------


def document(settings: Settings | None = None) -> dict[str, Any]:
    """The OpenAPI document as /schema/openapi.json serves it, for `settings` (default: the defaults).

    The app is built over a throwaway data dir: the document does not depend on where data lives."""
    from akidb.gateway.app import create_app

    settings = settings or Settings()
    with tempfile.TemporaryDirectory(prefix="akidb-openapi-") as data_dir:
        storage = msgspec.structs.replace(settings.storage, data_dir=data_dir, url="")
        app = create_app(msgspec.structs.replace(settings, storage=storage))
        return app.openapi_schema.to_schema()


def render(doc: dict[str, Any]) -> str:
    """The committed form: keys sorted, indent 2, a final newline."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    text = render(document())
    if not args:
        sys.stdout.write(text)
        return 0
    if len(args) != 1 or args[0].startswith("-"):
        sys.stderr.write("usage: python -m akidb.gateway.openapi [FILE]\n")
        return 2
    with open(args[0], "w", encoding="utf-8") as out:
        out.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

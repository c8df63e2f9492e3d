"""One place that turns exceptions into HTTP responses of Litestar's shape."""

from __future__ import annotations

import logging
import math
from typing import Any

import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.openapi import ResponseSpec
from litestar.types import ExceptionHandlersMap

from akidb.errors import AkidbError, NotCaughtUp, Overloaded, Unauthorized

log = logging.getLogger("akidb.gateway")


def _body(status_code: int, detail: str, extra: Any = None) -> dict[str, Any]:
    return {"status_code": status_code, "detail": detail, "extra": extra}


def akidb_error_handler(_: Request[Any, Any, Any], exc: AkidbError) -> Response[dict[str, Any]]:
    extra = {"code": exc.code, **exc.extra}
    headers = {}
    if isinstance(exc, Overloaded | NotCaughtUp):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return Response(
        _body(exc.status_code, exc.detail, extra),
        status_code=exc.status_code,
        headers=headers,
        media_type=MediaType.JSON,
    )


def validation_error_handler(_: Request[Any, Any, Any], exc: ValidationException) -> Response[dict[str, Any]]:
    """A body or parameter that does not match the schema: 400, naming each problem and where it is.

    Well-formed input that breaks a rule (wrong dimension, blank text) is the services' 422.
    """
    problems = exc.extra if isinstance(exc.extra, list) else []
    parts, fields = [], []
    for problem in problems:
        if isinstance(problem, dict):
            where = problem.get("key") or ""
            message = problem.get("message") or ""
            parts.append(f"{message} at `{where}`" if where else message)
            if where:
                fields.append(where)
    detail = "invalid request: " + ("; ".join(parts) if parts else exc.detail)
    extra: dict[str, Any] = {"code": "invalid_body", "problems": problems}
    if fields:
        extra["field"] = fields[0]
    return Response(_body(400, detail, extra), status_code=400, media_type=MediaType.JSON)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def http_error_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    detail = exc.detail
    extra: dict[str, Any] = {"code": _HTTP_CODES.get(exc.status_code, "http_error")}
    if isinstance(exc.extra, dict):
        extra.update(exc.extra)
    elif exc.extra:
        extra["problems"] = exc.extra
    if isinstance(exc, RequestEntityTooLarge):
        limit = request.route_handler.resolve_request_max_body_size()
        detail = f"the request body is larger than {limit} bytes (limits.max_body_bytes)"
        extra.update(field="body", limit=limit)
    return Response(
        _body(exc.status_code, detail, extra),
        status_code=exc.status_code,
        headers=exc.headers,
        media_type=MediaType.JSON,
    )


def recursion_error_handler(request: Request[Any, Any, Any], exc: RecursionError) -> Response[dict[str, Any]]:
    """A body nested deeper than msgspec can decode (about 1,000 levels) is the client's, a 400; any other
    RecursionError is a fault."""
    if "deserializing" not in str(exc):
        return unexpected_error_handler(request, exc)
    detail = "invalid request: the JSON body is nested too deeply to decode"
    extra = {"code": "invalid_body", "field": "body"}
    return Response(_body(400, detail, extra), status_code=400, media_type=MediaType.JSON)


def unexpected_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return Response(
        _body(500, "internal server error; the server log has the details", {"code": "internal_error"}),
        status_code=500,
        media_type=MediaType.JSON,
    )


class ErrorBody(msgspec.Struct):
    """Litestar's error shape, for the OpenAPI document."""

    status_code: int
    detail: str
    # Always holds `code`, a stable name to switch on ("not_found", "invalid_body", "unauthorized", ...),
    # and often `field` (where the problem is) and `limit` (the limit that was passed).
    extra: dict[str, Any]


_ERROR_DESCRIPTIONS = {
    400: "The body or a parameter does not match the schema; extra.field names where",
    401: "No API key, or an unknown, revoked or expired one (WWW-Authenticate: Bearer)",
    403: "The key is valid but lacks the role this route needs",
    404: "The collection, document or model does not exist",
    409: "A collection of that name already exists, or the model cannot be loaded on this machine",
    413: "A request limit (limits.*) was passed: body size, documents, inputs, characters per text or ids",
    422: "Well-formed input that breaks a rule; detail names the document and field",
    429: "The model's queue is full; Retry-After says when to try again",
    503: "The request's deadline (X-Request-Timeout-Ms) passed, or the model was being unloaded",
}


def error_responses(*status_codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the domain errors a handler can answer with."""
    return {
        code: ResponseSpec(data_container=ErrorBody, description=_ERROR_DESCRIPTIONS[code], generate_examples=False)
        for code in status_codes
    }


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    AkidbError: akidb_error_handler,
    ValidationException: validation_error_handler,
    HTTPException: http_error_handler,
    RecursionError: recursion_error_handler,
    Exception: unexpected_error_handler,
}

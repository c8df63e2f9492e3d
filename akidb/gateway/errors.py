"""One place that turns exceptions into HTTP responses of Litestar's shape."""

from __future__ import annotations

import logging
import math
from typing import Any

import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.types import ExceptionHandlersMap

from akidb.errors import AkidbError, Overloaded

log = logging.getLogger("akidb.gateway")


def _body(status_code: int, detail: str, extra: Any = None) -> dict[str, Any]:
    return {"status_code": status_code, "detail": detail, "extra": extra}


def akidb_error_handler(_: Request[Any, Any, Any], exc: AkidbError) -> Response[dict[str, Any]]:
    extra = {"code": exc.code, **exc.extra}
    headers = {}
    if isinstance(exc, Overloaded):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
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
    parts = []
    for problem in problems:
        if isinstance(problem, dict):
            where = problem.get("key") or ""
            message = problem.get("message") or ""
            parts.append(f"{message} at `{where}`" if where else message)
    detail = "invalid request: " + ("; ".join(parts) if parts else exc.detail)
    return Response(_body(400, detail, problems or None), status_code=400, media_type=MediaType.JSON)


def http_error_handler(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    return Response(
        _body(exc.status_code, exc.detail, exc.extra or None),
        status_code=exc.status_code,
        headers=exc.headers,
        media_type=MediaType.JSON,
    )


def unexpected_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return Response(
        _body(500, "internal server error; the server log has the details"),
        status_code=500,
        media_type=MediaType.JSON,
    )


class ErrorBody(msgspec.Struct):
    """Litestar's error shape, for the OpenAPI document."""

    status_code: int
    detail: str
    extra: dict[str, Any] | list[Any] | None = None


_ERROR_DESCRIPTIONS = {
    404: "The collection, document or model does not exist",
    409: "A collection of that name already exists",
    413: "Too many documents, or a body larger than server.max_body_bytes",
    422: "Well-formed input that breaks a rule; detail names the document and field",
    429: "The model's queue is full; Retry-After says when to try again",
    503: "The model cannot be loaded or run here, or the request's deadline (X-Request-Timeout-Ms) passed",
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
    Exception: unexpected_error_handler,
}

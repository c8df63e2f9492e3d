"""One place that turns exceptions into HTTP responses of Litestar's shape."""

from __future__ import annotations

import logging
import math
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
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
    """Malformed bodies and parameters: 422, with each problem and where it is in the detail."""
    problems = exc.extra if isinstance(exc.extra, list) else []
    parts = []
    for problem in problems:
        if isinstance(problem, dict):
            where = problem.get("key") or ""
            message = problem.get("message") or ""
            parts.append(f"{message} at `{where}`" if where else message)
    detail = "invalid request: " + ("; ".join(parts) if parts else exc.detail)
    return Response(_body(422, detail, problems or None), status_code=422, media_type=MediaType.JSON)


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


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    AkidbError: akidb_error_handler,
    ValidationException: validation_error_handler,
    HTTPException: http_error_handler,
    Exception: unexpected_error_handler,
}

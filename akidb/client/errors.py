"""The errors the client raises: one class per HTTP status family, each with the server's status, code and detail.

Every error body of the server is `{"status_code", "detail", "extra": {"code", maybe "field", ...}}`.
"""

from __future__ import annotations

from typing import Any

import httpx
import msgspec

__all__ = [
    "AkiDBError",
    "BadRequest",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "NotCaughtUp",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
    "error_from_response",
]

_MAX_TEXT_DETAIL = 500


class AkiDBError(Exception):
    """Base of every client error. `status` is None when no HTTP answer came (see ConnectionFailed)."""

    def __init__(
        self, detail: str, *, status: int | None = None, code: str | None = None, extra: dict[str, Any] | None = None
    ) -> None:
        self.detail = detail
        self.status = status
        self.code = code
        self.extra: dict[str, Any] = extra or {}
        super().__init__(detail)

    @property
    def field(self) -> str | None:
        """Where the problem is (`documents[3].vector`, `min_seq`, ...), when the server names it."""
        field = self.extra.get("field")
        return field if isinstance(field, str) else None

    def __str__(self) -> str:
        head = " ".join(part for part in (str(self.status) if self.status else "", self.code or "") if part)
        return f"{head}: {self.detail}" if head else self.detail


class BadRequest(AkiDBError):
    """400: the body or a parameter does not match the schema."""


class Unauthorized(AkiDBError):
    """401: no API key, or an unknown, revoked or expired one."""


class Forbidden(AkiDBError):
    """403: the key is valid but lacks the role the route needs."""


class NotFound(AkiDBError):
    """404: the collection, document, model or key does not exist (or the key may not see it)."""


class Conflict(AkiDBError):
    """409: a collection of that name exists, or a model cannot be loaded here."""


class PayloadTooLarge(AkiDBError):
    """413: a request limit was passed (body size, documents, inputs, ids); `extra["limit"]` often says which."""


class ValidationFailed(AkiDBError):
    """422: well-formed input that breaks a rule (wrong dimension, blank text, bad filter)."""


class RateLimited(AkiDBError):
    """429: the server's queue is full; raised once the retries are spent."""


class Unavailable(AkiDBError):
    """503: not ready, a deadline passed, a model was unloading; raised once the retries are spent."""


class NotCaughtUp(Unavailable):
    """503 not_caught_up: the answering process had not applied the `min_seq` the read asked for."""


class ServerError(AkiDBError):
    """Any other 5xx."""


class ConnectionFailed(AkiDBError):
    """No HTTP answer (refused, reset, timed out) once the retries are spent; `__cause__` is httpx's error."""


_BY_STATUS: dict[int, type[AkiDBError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationFailed,
    429: RateLimited,
    503: Unavailable,
}


def error_from_response(response: httpx.Response) -> AkiDBError:
    """The error for a non-2xx answer; a body that is not the server's JSON still gives a readable detail."""
    status = response.status_code
    detail, extra = "", {}
    try:
        body = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        body = None
    if isinstance(body, dict):
        if isinstance(body.get("detail"), str):
            detail = body["detail"]
        if isinstance(body.get("extra"), dict):
            extra = body["extra"]
    if not detail:
        text = response.text.strip()
        detail = text[:_MAX_TEXT_DETAIL] if text else (response.reason_phrase or "no detail")
        detail = f"{detail} ({response.request.method} {response.request.url.path})"
    code = extra.get("code") if isinstance(extra.get("code"), str) else None
    cls = _BY_STATUS.get(status)
    if cls is Unavailable and code == "not_caught_up":
        cls = NotCaughtUp
    if cls is None:
        cls = ServerError if status >= 500 else AkiDBError
    return cls(detail, status=status, code=code, extra=extra)

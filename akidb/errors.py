"""Domain errors. Each carries its HTTP status and a stable code; the gateway maps them in one place."""

from __future__ import annotations

from typing import Any, ClassVar


class AkidbError(Exception):
    """Base of every error a client can cause or be told about."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, detail: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra or {}


class InvalidRequest(AkidbError):
    status_code = 422
    code = "invalid_request"


class InvalidDocument(InvalidRequest):
    code = "invalid_document"


class DimensionMismatch(InvalidRequest):
    code = "dimension_mismatch"


class Unauthorized(AkidbError):
    """No key, or one that is unknown, revoked or expired: 401 with WWW-Authenticate: Bearer."""

    status_code = 401
    code = "unauthorized"


class Forbidden(AkidbError):
    """A valid key without the right the route needs."""

    status_code = 403
    code = "forbidden"


class NotFound(AkidbError):
    status_code = 404
    code = "not_found"


def collection_not_found(name: str) -> NotFound:
    """The one answer for a collection that does not exist, or that the caller's key may not see."""
    return NotFound(f"collection '{name}' does not exist")


class ModelNotFound(NotFound):
    code = "model_not_found"


class AlreadyExists(AkidbError):
    status_code = 409
    code = "already_exists"


class PayloadTooLarge(AkidbError):
    status_code = 413
    code = "payload_too_large"


class Overloaded(AkidbError):
    status_code = 429
    code = "overloaded"

    def __init__(self, detail: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(detail, extra={"retry_after_s": retry_after_s})
        self.retry_after_s = retry_after_s


class DeadlineExceeded(AkidbError):
    """The request's deadline (X-Request-Timeout-Ms or embedding.request_timeout_ms) passed first."""

    status_code = 503
    code = "deadline_exceeded"


class NotCaughtUp(AkidbError):
    """A read asked for a `min_seq` this process had not applied within storage.consistency_wait_ms."""

    status_code = 503
    code = "not_caught_up"

    def __init__(self, detail: str, *, applied_seq: int, min_seq: int, retry_after_s: float = 1.0) -> None:
        super().__init__(detail, extra={"applied_seq": applied_seq, "min_seq": min_seq, "field": "min_seq"})
        self.retry_after_s = retry_after_s


class ModelUnavailable(AkidbError):
    """The model exists in the registry but cannot be loaded or run here: a state the operator must change
    (install its files or an extra), not an outage, so not a 5xx."""

    status_code = 409
    code = "model_unavailable"


class ModelUnloading(AkidbError):
    """The model was unloaded while the request waited for it; sending the request again loads it."""

    status_code = 503
    code = "model_unloading"


class ConfigError(Exception):
    """A bad configuration; start-up stops with this one-line message."""

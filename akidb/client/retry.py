"""When and how long to wait before trying a request again.

A small loop on purpose rather than a retry library (tenacity, backoff): `akidb.client` must import with only
the standard library, httpx and msgspec.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

import httpx

__all__ = ["RETRY_STATUSES", "RetryPolicy", "retry_after_error", "retry_after_status"]

# Statuses that mean "not now": the server did nothing and says when to come back (Retry-After).
RETRY_STATUSES = frozenset({429, 503})
# The request never reached the server: safe to send again whatever it does.
_NEVER_SENT: tuple[type[httpx.TransportError], ...] = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# The request may have reached the server: sent again only when doing it twice does no harm.
_MAYBE_SENT: tuple[type[httpx.TransportError], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`attempts` tries in all (1: no retry). Waits follow Retry-After when the server sends it (capped at
    `max_retry_after`), else exponential backoff with full jitter: uniform(0, min(backoff_max, base * 2**n))."""

    attempts: int = 5
    backoff_base: float = 0.25
    backoff_max: float = 8.0
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        if self.backoff_base < 0 or self.backoff_max < 0 or self.max_retry_after < 0:
            raise ValueError("RetryPolicy delays must not be negative")

    def delay(self, attempt: int, retry_after: str | None) -> float:
        """Seconds to wait after try number `attempt` (0 for the first) failed; `retry_after` is the answer's
        Retry-After header, in seconds or an HTTP date, if it had one."""
        if retry_after is not None:
            seconds = _parse_retry_after(retry_after)
            if seconds is not None:
                return min(seconds, self.max_retry_after)
        return random.uniform(0.0, min(self.backoff_max, self.backoff_base * 2.0 ** min(attempt, 64)))


def _parse_retry_after(value: str) -> float | None:
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds else None  # NaN is no answer
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": an HTTP date is GMT anyway
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


def retry_after_status(policy: RetryPolicy, attempt: int, response: httpx.Response) -> float | None:
    """The wait before another try, or None when this answer is final."""
    if response.status_code not in RETRY_STATUSES or attempt + 1 >= policy.attempts:
        return None
    return policy.delay(attempt, response.headers.get("Retry-After"))


def retry_after_error(policy: RetryPolicy, attempt: int, error: httpx.TransportError, idempotent: bool) -> float | None:
    """The wait before another try after a transport error, or None to give up."""
    if attempt + 1 >= policy.attempts:
        return None
    if isinstance(error, _NEVER_SENT) or (idempotent and isinstance(error, _MAYBE_SENT)):
        return policy.delay(attempt, None)
    return None

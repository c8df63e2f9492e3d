"""The deadline of the request being served: a leaf both the gateway (which sets it) and the embedding
layer (which honours it) may import."""

from __future__ import annotations

from contextvars import ContextVar

# time.monotonic() seconds, set by the gateway from the X-Request-Timeout-Ms header or
# embedding.request_timeout_ms; None means no deadline.
request_deadline: ContextVar[float | None] = ContextVar("akidb_request_deadline", default=None)

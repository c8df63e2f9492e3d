"""A Python client for the AkiDB gateway: `Client` (blocking) and `AsyncClient` (asyncio), on httpx.

Imports only the standard library, httpx and msgspec (never the server's modules), so it installs and loads
without numpy, torch or Litestar. See docs/client.md.
"""

from __future__ import annotations

from akidb.client._documents import document_id
from akidb.client._wire import OMITTED
from akidb.client.aio import AsyncClient
from akidb.client.errors import (
    AkiDBError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    Forbidden,
    NotCaughtUp,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from akidb.client.models import (
    ApiKey,
    ApiKeyCreated,
    Collection,
    DeleteResult,
    Document,
    DocumentPage,
    Embeddings,
    Hnsw,
    Limits,
    Model,
    ModelList,
    ModelUnloaded,
    OpenAIEmbedding,
    OpenAIEmbeddings,
    OpenAIUsage,
    SearchHit,
    SearchResult,
    UpsertResult,
    Usage,
)
from akidb.client.retry import RetryPolicy
from akidb.client.sync import Client

__all__ = [
    "OMITTED",
    "AkiDBError",
    "ApiKey",
    "ApiKeyCreated",
    "AsyncClient",
    "BadRequest",
    "Client",
    "Collection",
    "Conflict",
    "ConnectionFailed",
    "DeleteResult",
    "Document",
    "DocumentPage",
    "Embeddings",
    "Forbidden",
    "Hnsw",
    "Limits",
    "Model",
    "ModelList",
    "ModelUnloaded",
    "NotCaughtUp",
    "NotFound",
    "OpenAIEmbedding",
    "OpenAIEmbeddings",
    "OpenAIUsage",
    "PayloadTooLarge",
    "RateLimited",
    "RetryPolicy",
    "SearchHit",
    "SearchResult",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "UpsertResult",
    "Usage",
    "ValidationFailed",
    "document_id",
]

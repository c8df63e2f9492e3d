"""The results, as msgspec Structs mirroring the server's answers (akidb/gateway/schemas.py, copied on purpose:
the client must not import the server). Unknown fields are ignored, so a newer server may add some; fields the
server added later have defaults, so an older one may lack them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from msgspec import Struct, field

__all__ = [
    "ApiKey",
    "ApiKeyCreated",
    "Collection",
    "DeleteResult",
    "Document",
    "DocumentPage",
    "Embeddings",
    "Hnsw",
    "Limits",
    "Model",
    "ModelList",
    "ModelUnloaded",
    "OpenAIEmbedding",
    "OpenAIEmbeddings",
    "OpenAIUsage",
    "SearchHit",
    "SearchResult",
    "UpsertResult",
    "Usage",
]


class _Result(Struct, kw_only=True):
    pass


class Hnsw(_Result):
    m: int
    ef_construction: int
    ef_search: int


class Collection(_Result):
    name: str
    embedding_model: str | None
    dimension: int
    metric: str
    hnsw: Hnsw
    metadata: dict[str, Any] = field(default_factory=dict)
    document_count: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None
    # The collection's last write in the database, and how far the answering process has applied it.
    seq: int = 0
    applied_seq: int = 0


class Usage(_Result):
    total_tokens: int = 0
    duration_ms: float = 0.0


class UpsertResult(_Result):
    """For an upsert sent in several requests: ids in input order, counts and usage summed, the last seq."""

    ids: list[str]
    inserted: int
    updated: int
    embeddings_generated: bool
    model: str | None = None
    usage: Usage = field(default_factory=Usage)
    seq: int = 0


class Document(_Result):
    id: str
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    vector: list[float] | None = None  # only when asked for


class DocumentPage(_Result):
    documents: list[Document]
    next_cursor: str | None = None

    def __iter__(self) -> Iterator[Document]:
        return iter(self.documents)

    def __len__(self) -> int:
        return len(self.documents)


class DeleteResult(_Result):
    deleted: int
    seq: int = 0
    dry_run: bool = False


class SearchHit(_Result):
    id: str
    score: float
    # The dense distance where the dense side ranked the hit; None for keyword-only hits.
    distance: float | None = None
    text: str | None = None
    metadata: dict[str, Any] | None = None
    vector: list[float] | None = None


class SearchResult(_Result):
    results: list[SearchHit]
    model: str | None = None
    usage: Usage = field(default_factory=Usage)

    def __iter__(self) -> Iterator[SearchHit]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)


class Embeddings(_Result):
    embeddings: list[list[float]]
    model: str
    dimension: int
    usage: Usage = field(default_factory=Usage)


class OpenAIEmbedding(_Result):
    index: int
    embedding: list[float] | str  # a str only with encoding_format=base64, which this client does not ask for
    object: str = "embedding"


class OpenAIUsage(_Result):
    prompt_tokens: int = 0
    total_tokens: int = 0


class OpenAIEmbeddings(_Result):
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage = field(default_factory=OpenAIUsage)
    object: str = "list"


class Model(_Result):
    id: str
    name: str
    hf_path: str
    dimension: int
    max_seq_length: int
    pooling: str
    parameters_m: float
    size_mb: float
    languages: list[str]
    use_cases: list[str]
    default_quantization: str
    is_default: bool
    description: str
    available: bool
    loaded: bool
    query_prefix: str = ""
    document_prefix: str = ""
    matryoshka_dimensions: list[int] = field(default_factory=list)
    providers: list[str] = field(default_factory=list)
    loaded_provider: str | None = None
    loaded_quantization: str | None = None
    memory_mb: float | None = None


class ModelList(_Result):
    models: list[Model]
    default_model: str | None = None


class ModelUnloaded(_Result):
    id: str
    unloaded: bool  # False: it was not loaded


class ApiKey(_Result):
    id: str
    name: str
    role: str
    collections: list[str] | None = None
    expires_at: datetime | None = None
    created_at: datetime | None = None
    revoked_at: datetime | None = None


class ApiKeyCreated(ApiKey, kw_only=True):
    key: str  # the secret itself: the server shows it this once


class Limits(_Result):
    """What one request may hold on this server."""

    max_body_bytes: int
    max_documents_per_upsert: int
    max_inputs_per_embed: int
    max_text_chars: int
    max_top_k: int
    max_ids_per_request: int
    max_page_size: int
    max_filter_depth: int
    max_filter_nodes: int
    max_filter_values: int


# Answers the client unwraps.
class _CollectionList(_Result):
    collections: list[Collection]


class _KeyList(_Result):
    keys: list[ApiKey]


class _Count(_Result):
    count: int

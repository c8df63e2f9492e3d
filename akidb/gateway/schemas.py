"""Wire Structs: what the HTTP API takes and returns (../shared/API.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar.datastructures import ResponseHeader
from litestar.params import QueryParameter
from msgspec import UNSET, Struct, UnsetType


class _In(Struct, forbid_unknown_fields=True, kw_only=True):
    """Request bodies: an unknown field is a client mistake worth a 4xx, not silence."""


class _Out(Struct, kw_only=True):
    pass


# Metadata is any JSON object, nested at most this deep. The limit sits far below the interpreter's recursion
# limit, which msgspec reaches when it encodes a deeper value: without it, metadata nested ~950 levels was
# stored, and every later answer that held it (the collection list, a document page) was a 500.
MAX_METADATA_DEPTH = 32


def check_nesting(value: Any, field: str, limit: int = MAX_METADATA_DEPTH) -> None:
    """ValueError for JSON nested deeper than `limit` objects and arrays; raised in `__post_init__`, msgspec
    turns it into a validation error, so the client gets a 400 naming where."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            raise ValueError(f"{field} is nested deeper than {limit} levels")
        pending.extend((child, depth + 1) for child in children)


def request_structs() -> list[type[_In]]:
    pending, found = list(_In.__subclasses__()), []
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


# Any JSON on the wire: the service parses the filter language (API.md, "Filters (metadata)") and names the
# path of each problem in a 422, which a schema type could not.
Filter = Annotated[
    Any,
    msgspec.Meta(
        description="A metadata filter: paths (dots descend), $eq $ne $gt $gte $lt $lte $in $nin $exists "
        "$contains, and $and $or $not",
        examples=[{"tenant": "acme", "year": {"$gte": 2022}, "tags": {"$contains": "faq"}}],
    ),
]


# --- collections ---


class HnswIn(_In):
    m: int = 16
    ef_construction: int = 200
    ef_search: int = 64


class HnswOut(_Out):
    m: int
    ef_construction: int
    ef_search: int


class CollectionCreate(_In):
    name: str
    # Omitted: the server's default model. null: a user-provided collection (vectors only).
    embedding_model: str | UnsetType | None = UNSET
    dimension: int | None = None
    metric: Literal["cosine", "l2", "ip"] = "cosine"
    hnsw: HnswIn = msgspec.field(default_factory=HnswIn)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_nesting(self.metadata, "metadata")


class HnswPatch(_In):
    ef_search: int | UnsetType = UNSET
    m: int | UnsetType = UNSET
    ef_construction: int | UnsetType = UNSET


class CollectionPatch(_In):
    metadata: dict[str, Any] | UnsetType = UNSET
    hnsw: HnswPatch | UnsetType = UNSET
    name: str | UnsetType = UNSET
    embedding_model: str | UnsetType | None = UNSET
    dimension: int | UnsetType = UNSET
    metric: str | UnsetType = UNSET

    def __post_init__(self) -> None:
        check_nesting(self.metadata, "metadata")


class RecallOut(_Out):
    """Live recall: the mean recall@k of the last sampled searches the graph served at `ef_search`, each re-run
    exactly in the background; `ef_search_advice` (else null) when it is below `target`."""

    estimate: float
    samples: int
    ef_search: int
    target: float
    ef_search_advice: int | None


class Collection(_Out, omit_defaults=True):
    name: str
    embedding_model: str | None
    dimension: int
    metric: str
    hnsw: HnswOut
    metadata: dict[str, Any]
    document_count: int
    created_at: str
    updated_at: str
    # The collection's last write in the database, and how far the answering process has applied it.
    seq: int
    applied_seq: int
    # GET /api/v1/collections/{name} only, once some of its searches were sampled (storage.recall_sample_rate).
    recall: RecallOut | None = None


class CollectionList(_Out):
    collections: list[Collection]


# --- documents ---


# Read-your-writes across processes: the answering process first applies the collection up to this seq (a
# write answer's `seq`), waiting up to storage.consistency_wait_ms, else 503 not_caught_up.
MinSeq = (
    Annotated[
        int,
        msgspec.Meta(ge=0, description="Answer only once this process has applied the collection up to this seq"),
    ]
    | None
)


# The same on GET routes, as ?min_seq=.
MinSeqQuery = Annotated[
    int | None,
    QueryParameter(ge=0, description="Answer only once this process has applied the collection up to this seq"),
]
# Answers without a body (204) carry the write's seq here.
SEQ_HEADER = ResponseHeader(
    name="X-AkiDB-Seq",
    description="The collection's seq once this write is applied: pass it as min_seq to read it on any process",
    documentation_only=True,
    example="42",
)


class DocumentIn(_In):
    id: str | None = None
    text: str | None = None
    vector: list[float] | None = None
    metadata: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_nesting(self.metadata, "metadata")


class UpsertRequest(_In):
    documents: list[DocumentIn]


class Usage(_Out):
    total_tokens: int
    duration_ms: float


class UpsertResponse(_Out):
    # Pass as min_seq to read this write on any process.
    seq: int
    ids: list[str]
    inserted: int
    updated: int
    embeddings_generated: bool
    model: str | None
    usage: Usage


class Document(_Out, omit_defaults=True):
    """A field is left out only when the request's `include` left it out: a document without text has
    `"text": null`, one without metadata `"metadata": {}`."""

    id: str
    text: str | UnsetType | None = UNSET
    metadata: dict[str, Any] | UnsetType = UNSET
    vector: list[float] | UnsetType = UNSET


class DocumentList(_Out):
    documents: list[Document]
    next_cursor: str | None


class DeleteRequest(_In):
    """At least one of ids or a non-empty filter; both: the documents among ids that pass the filter."""

    ids: list[str] | None = None
    filter: Filter = None
    dry_run: bool = False


class DeleteResponse(_Out):
    deleted: int
    seq: int
    dry_run: bool = False


class GetRequest(_In):
    ids: list[str] | None = None
    filter: Filter = None
    limit: int = 100
    cursor: str | None = None
    include: list[str] = msgspec.field(default_factory=lambda: ["text", "metadata"])
    min_seq: MinSeq = None


class CountRequest(_In):
    filter: Filter = None
    min_seq: MinSeq = None


class CountResponse(_Out):
    count: int


# --- search ---


class FusionIn(_In):
    k: float = 60.0
    dense_weight: float = 1.0
    keyword_weight: float = 1.0
    # How deep each side ranks before fusion; default the larger of 100 and top_k.
    candidates: int | None = None


class SearchRequest(_In):
    query: str | None = None
    vector: list[float] | None = None
    top_k: int = 10
    ef_search: int | None = None
    include: list[str] = msgspec.field(default_factory=lambda: ["text", "metadata"])
    mode: Literal["dense", "keyword", "hybrid"] = "dense"
    filter: Filter = None
    fusion: FusionIn | None = None
    min_seq: MinSeq = None


class SearchHit(_Out, omit_defaults=True):
    id: str
    score: float
    # The dense distance where the dense side ranked the hit; null for keyword-only hits.
    distance: float | None
    text: str | UnsetType | None = UNSET
    metadata: dict[str, Any] | UnsetType = UNSET
    vector: list[float] | UnsetType = UNSET


class SearchResponse(_Out):
    results: list[SearchHit]
    model: str | None
    usage: Usage


# --- embeddings ---


class EmbedRequest(_In):
    inputs: list[str]
    model: str | None = None
    normalize: bool = True
    input_type: Literal["query", "document"] = "document"
    # A smaller Matryoshka size the model was trained for; the vectors are cut (and re-normalised).
    dimensions: int | None = None


class EmbedResponse(_Out):
    embeddings: list[list[float]]
    model: str
    dimension: int
    usage: Usage


class OpenAIEmbeddingRequest(_In):
    """OpenAI's /v1/embeddings body. `user` is accepted and ignored; `input_type` is ours."""

    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    input_type: Literal["query", "document"] = "document"


class OpenAIEmbedding(_Out, kw_only=True):
    object: Literal["embedding"] = "embedding"
    index: int
    # A list of floats, or with encoding_format=base64 the little-endian float32 bytes in base64.
    embedding: list[float] | str


class OpenAIUsage(_Out):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingResponse(_Out, kw_only=True):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


# --- models ---


class ModelInfo(_Out):
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
    query_prefix: str
    document_prefix: str
    matryoshka_dimensions: list[int]
    # Backends that can serve it (empty: any); and, while loaded, which one does and what it costs.
    providers: list[str]
    loaded_provider: str | None = None
    loaded_quantization: str | None = None
    memory_mb: float | None = None


class ModelUnloaded(_Out):
    id: str
    unloaded: bool


class ModelList(_Out):
    models: list[ModelInfo]
    default_model: str | None


# --- API keys ---


class KeyCreate(_In):
    name: str
    role: Literal["read", "write", "admin"]
    # Collection names or globs ("team-*") the key is limited to; null: every collection.
    collections: list[str] | None = None
    # ISO 8601; null: never expires.
    expires_at: datetime | None = None


class ApiKey(_Out):
    id: str
    name: str
    role: str
    collections: list[str] | None
    expires_at: str | None
    created_at: str
    revoked_at: str | None


class ApiKeyCreated(ApiKey):
    # The key itself: shown this once, only its hash is stored.
    key: str


class ApiKeyList(_Out):
    keys: list[ApiKey]


# --- operations ---


class Limits(_Out):
    """What one request may hold on this server, so that a client sizes its batches under them."""

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


class Health(_Out):
    status: str
    detail: str | None = None

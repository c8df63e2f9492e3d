"""Checks on what clients send. Every error names the field and the document's index."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from akidb.config import LimitsSettings
from akidb.errors import DimensionMismatch, InvalidDocument, InvalidRequest, PayloadTooLarge
from akidb.storage.models import MAX_DOCUMENT_ID_LENGTH

MAX_COLLECTION_NAME = 63
COLLECTION_NAME_RE = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_-]{{0,{MAX_COLLECTION_NAME - 1}}}$")
MAX_DIMENSION = 65536
METRICS = ("cosine", "l2", "ip")
MAX_HNSW_M = 256
MAX_EF = 10_000
DEFAULT_LIMITS = LimitsSettings()


class DocumentInput(Protocol):
    """What an upsert carries per document; the gateway's wire Struct has these attributes."""

    @property
    def id(self) -> str | None: ...
    @property
    def text(self) -> str | None: ...
    @property
    def vector(self) -> Sequence[float] | None: ...
    @property
    def metadata(self) -> Mapping[str, Any] | None: ...


@dataclass(slots=True)
class PreparedDocument:
    id: str | None
    text: str | None
    metadata: dict[str, Any]
    vector: npt.NDArray[np.float32] | None


def check_collection_name(name: str) -> None:
    if not COLLECTION_NAME_RE.fullmatch(name):  # match() lets "$" pass a trailing newline
        raise InvalidRequest(
            f"name '{name}' is not a valid collection name: use 1-63 letters, digits, '_' or '-', "
            "starting with a letter or digit",
            extra={"field": "name"},
        )


def check_hnsw(m: int, ef_construction: int, ef_search: int) -> None:
    if not 2 <= m <= MAX_HNSW_M:
        raise InvalidRequest(f"hnsw.m must be between 2 and {MAX_HNSW_M}, got {m}", extra={"field": "hnsw.m"})
    if not 1 <= ef_construction <= MAX_EF:
        raise InvalidRequest(
            f"hnsw.ef_construction must be between 1 and {MAX_EF}, got {ef_construction}",
            extra={"field": "hnsw.ef_construction"},
        )
    check_ef_search(ef_search, "hnsw.ef_search")


def check_ef_search(ef_search: int, field: str) -> None:
    if not 1 <= ef_search <= MAX_EF:
        raise InvalidRequest(f"{field} must be between 1 and {MAX_EF}, got {ef_search}", extra={"field": field})


def check_vector(
    values: Sequence[float], *, dimension: int, metric: str, collection: str, where: str, field: str
) -> npt.NDArray[np.float32]:
    if len(values) != dimension:
        raise DimensionMismatch(
            f"{where}: vector has {len(values)} values, collection '{collection}' expects {dimension}",
            extra={"field": field},
        )
    # The common case in one conversion and one reduction (a search's query vector is checked on the event
    # loop): a finite 4 x squared norm in float32 means every value is finite in float64 and in float32 too,
    # and, when positive, that the vector is not all zeros. Anything else is examined step by step below.
    with np.errstate(over="ignore", invalid="ignore"):
        fast = np.array(values, dtype=np.float32)
        reach = np.float32(4) * np.dot(fast, fast)
    if fast.ndim == 1 and np.isfinite(reach) and (reach > 0 or metric != "cosine"):
        return fast
    vector = np.asarray(values, dtype=np.float64)
    if not np.isfinite(vector).all():
        bad = int(np.flatnonzero(~np.isfinite(vector))[0])
        raise InvalidDocument(f"{where}: vector value {bad} is not a finite number", extra={"field": f"{field}[{bad}]"})
    with np.errstate(over="ignore"):
        as_f32 = vector.astype(np.float32)
    if not np.isfinite(as_f32).all():
        raise InvalidDocument(f"{where}: vector values exceed the float32 range", extra={"field": field})
    with np.errstate(over="ignore"):
        # A distance between two such vectors reaches 4 x the squared norm: it must stay a float32 number.
        reach = np.float32(4) * np.dot(as_f32, as_f32)
    if not np.isfinite(reach):
        raise InvalidDocument(
            f"{where}: vector values are too large: distances between such vectors overflow float32",
            extra={"field": field},
        )
    if metric == "cosine" and not np.any(as_f32):
        raise InvalidDocument(
            f"{where}: vector is all zeros, which has no direction for the cosine metric",
            extra={"field": field},
        )
    return as_f32


def check_text(text: str, *, where: str, field: str) -> None:
    if not text.strip():
        raise InvalidDocument(f"{where}: text is empty", extra={"field": field})


def too_large(field: str, what: str, limit: int, setting: str) -> PayloadTooLarge:
    """413 for a request over one of the `limits` settings: `<field>: <what>, the limit is N (limits.<setting>)`."""
    return PayloadTooLarge(
        f"{field}: {what}, the limit is {limit} (limits.{setting})", extra={"field": field, "limit": limit}
    )


def check_text_length(text: str, *, field: str, max_chars: int) -> None:
    """Before any tokenizing: a text over `limits.max_text_chars` is refused whole (413), not truncated."""
    if len(text) > max_chars:
        raise too_large(field, f"{len(text)} characters in one text", max_chars, "max_text_chars")


def check_ids(ids: Sequence[str] | None, max_ids: int) -> None:
    if ids is not None and len(ids) > max_ids:
        raise too_large("ids", f"{len(ids)} ids in one request", max_ids, "max_ids_per_request")


def prepare_documents(
    documents: Sequence[DocumentInput],
    *,
    collection: str,
    dimension: int,
    metric: str,
    has_model: bool,
    max_documents: int = DEFAULT_LIMITS.max_documents_per_upsert,
    max_text_chars: int = DEFAULT_LIMITS.max_text_chars,
) -> list[PreparedDocument]:
    """Validate every document before anything is written or embedded."""
    if not documents:
        raise InvalidRequest("documents: send at least one document", extra={"field": "documents"})
    if len(documents) > max_documents:
        raise too_large(
            "documents", f"{len(documents)} documents in one upsert", max_documents, "max_documents_per_upsert"
        )
    prepared: list[PreparedDocument] = []
    first_seen: dict[str, int] = {}
    checked = _checked_vectors(documents, dimension=dimension, metric=metric)
    for position, doc in enumerate(documents):
        where = f"document {position}"
        field = f"documents[{position}]"
        if doc.id is not None:
            if not doc.id or len(doc.id) > MAX_DOCUMENT_ID_LENGTH:
                raise InvalidDocument(
                    f"{where}: id must be 1 to {MAX_DOCUMENT_ID_LENGTH} characters",
                    extra={"field": f"{field}.id"},
                )
            if "\x00" in doc.id:
                # PostgreSQL text cannot hold NUL; SQLite could, and both must answer alike.
                raise InvalidDocument(f"{where}: id contains a NUL character", extra={"field": f"{field}.id"})
            if doc.id in first_seen:
                raise InvalidDocument(
                    f"{where}: id '{doc.id}' is also used by document {first_seen[doc.id]}",
                    extra={"field": f"{field}.id"},
                )
            first_seen[doc.id] = position
        if doc.text is not None:
            check_text_length(doc.text, field=f"{field}.text", max_chars=max_text_chars)
            check_text(doc.text, where=where, field=f"{field}.text")
            if "\x00" in doc.text:
                raise InvalidDocument(f"{where}: text contains a NUL character", extra={"field": f"{field}.text"})
        if doc.metadata is not None:
            _check_metadata(doc.metadata, where=where, field=f"{field}.metadata")
        vector = None
        if checked is not None and doc.vector is not None:
            vector = checked[position]
        elif doc.vector is not None:  # some vector is refused: find which, with its message
            vector = check_vector(
                doc.vector,
                dimension=dimension,
                metric=metric,
                collection=collection,
                where=where,
                field=f"{field}.vector",
            )
        elif doc.text is None:
            raise InvalidDocument(f"{where}: give a text or a vector", extra={"field": field})
        elif not has_model:
            raise InvalidDocument(
                f"{where}: collection '{collection}' has no embedding model, so every document needs a vector",
                extra={"field": f"{field}.vector"},
            )
        prepared.append(PreparedDocument(doc.id, doc.text, dict(doc.metadata or {}), vector))
    return prepared


def _checked_vectors(
    documents: Sequence[DocumentInput], *, dimension: int, metric: str
) -> dict[int, npt.NDArray[np.float32]] | None:
    """check_vector for every document's vector in a few whole-batch numpy passes: by position, the float32
    vectors, or None if any would be refused (check_vector then finds which, with its message)."""
    positions: list[int] = []
    rows: list[Sequence[float]] = []
    for position, doc in enumerate(documents):
        if doc.vector is not None:
            positions.append(position)
            rows.append(doc.vector)
    if not rows:
        return {}
    if any(len(row) != dimension for row in rows):
        return None
    matrix = np.asarray(rows, dtype=np.float64).reshape(len(rows), dimension)
    if not np.isfinite(matrix).all():
        return None
    with np.errstate(over="ignore"):
        as_f32 = matrix.astype(np.float32)
        reach = np.float32(4) * np.einsum("ij,ij->i", as_f32, as_f32)
    if not (np.isfinite(as_f32).all() and np.isfinite(reach).all()):
        return None
    if metric == "cosine" and not as_f32.any(axis=1).all():
        return None
    return dict(zip(positions, as_f32, strict=True))


def _check_metadata(value: Any, *, where: str, field: str) -> None:
    """No NUL character in a key or string: PostgreSQL's JSONB and text refuse them, and every database
    must take the same documents."""
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidDocument(f"{where}: {field} contains a NUL character", extra={"field": field})
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if "\x00" in key:
                raise InvalidDocument(f"{where}: a key of {field} contains a NUL character", extra={"field": field})
            _check_metadata(item, where=where, field=f"{field}.{key}")
    elif isinstance(value, list):
        for position, item in enumerate(value):
            _check_metadata(item, where=where, field=f"{field}[{position}]")


def check_top_k(top_k: int, max_top_k: int) -> None:
    if not 1 <= top_k <= max_top_k:
        raise InvalidRequest(
            f"top_k must be between 1 and {max_top_k}, got {top_k} (limits.max_top_k)",
            extra={"field": "top_k", "limit": max_top_k},
        )


def check_include(include: Sequence[str], allowed: Sequence[str]) -> None:
    unknown = [item for item in include if item not in allowed]
    if unknown:
        raise InvalidRequest(f"include: '{unknown[0]}' is not one of {', '.join(allowed)}", extra={"field": "include"})

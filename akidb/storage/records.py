"""The plain records the storage layer hands upward (never ORM objects), and the vector blob format."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class HnswParams:
    m: int
    ef_construction: int
    ef_search: int


@dataclass(frozen=True, slots=True)
class CollectionRecord:
    id: int
    uid: str
    name: str
    embedding_model: str | None
    dimension: int
    metric: str
    hnsw: HnswParams
    metadata: dict[str, Any]
    last_seq: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class DocumentRecord:
    id: str
    label: int
    text: str | None
    metadata: dict[str, Any]
    vector: Vector | None
    seq: int


@dataclass(frozen=True, slots=True)
class StoredRow:
    """One row as the in-memory structures need it when a collection is opened."""

    label: int
    id: str
    text: str | None
    metadata: dict[str, Any]
    vector: bytes
    seq: int


@dataclass(frozen=True, slots=True)
class NewDocument:
    id: str
    text: str | None
    metadata: dict[str, Any]
    vector: Vector


@dataclass(frozen=True, slots=True)
class UpsertOutcome:
    labels: list[int]  # aligned with the input documents
    is_new: list[bool]  # per document: inserted (True) or replaced (False)
    inserted: int
    updated: int
    last_seq: int
    base_seq: int  # the collection's seq before this write: what had to be applied first


@dataclass(frozen=True, slots=True)
class DeleteOutcome:
    labels: list[int]
    last_seq: int
    base_seq: int


@dataclass(frozen=True, slots=True)
class CollectionHead:
    """What a follower compares with its own state, for every collection, every round."""

    id: int
    name: str
    last_seq: int
    purged_seq: int
    ef_search: int


@dataclass(frozen=True, slots=True)
class Changes:
    """Writes to one collection with seq in (after, until], read in one snapshot: tombstones (labels, which
    are never reused) and the rows as they stand at `until`."""

    until: int
    purged_seq: int
    tombstones: list[int]
    rows: list[StoredRow]
    more: bool  # `until` was lowered to keep the batch small: call again


def vector_to_blob(vector: Vector) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def blob_to_vector(blob: bytes) -> Vector:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)

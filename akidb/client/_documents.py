"""Documents on their way out: deterministic ids, batches, and the merge of batched upsert answers."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from typing import Any

import msgspec

from akidb.client.models import UpsertResult, Usage

__all__ = ["batches", "document_id", "merge_upserts", "prepare"]

_CONTENT_FIELDS = ("text", "vector", "metadata")


def _vector(values: Iterable[Any] | msgspec.Raw) -> list[float] | msgspec.Raw:
    """Any sequence of numbers (a list, a tuple, a numpy array) as plain floats: [1, 2] and [1.0, 2.0] are one
    content and hash alike. msgspec converts in C (a 384-value vector per document adds up on an import) and
    refuses what is not a number (a bool, a string) with the position. A msgspec.Raw (the JSON text of the
    array, as `akidb import` reads it from a file) goes out as it is: the server checks it."""
    if isinstance(values, msgspec.Raw):
        return values
    tolist = getattr(values, "tolist", None)
    plain = tolist() if callable(tolist) else values if isinstance(values, list) else list(values)
    try:
        return msgspec.convert(plain, list[float])
    except msgspec.ValidationError as exc:
        raise TypeError(f"a vector must hold numbers only: {exc}") from None


def document_id(document: Mapping[str, Any]) -> str:
    """A stable id for a document's content (text, vector, metadata; never its id): the first 32 hex digits of
    sha256 over canonical JSON. The same content gives the same id in every process, so a batch sent twice
    (a retry, an import run again) replaces its documents instead of duplicating them."""
    content: dict[str, Any] = {}
    for name in _CONTENT_FIELDS:
        value = document.get(name)
        if value is None or (name == "metadata" and not value):
            continue  # absent, null and (for metadata) {} are stored alike
        if name == "vector":
            value = msgspec.json.decode(value, type=list[float]) if isinstance(value, msgspec.Raw) else _vector(value)
        content[name] = value
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def prepare(document: Mapping[str, Any], deterministic_ids: bool) -> dict[str, Any]:
    """The wire form of one document: a plain dict, the vector as floats, and an id when asked for."""
    if not isinstance(document, Mapping):
        raise TypeError(f"a document is a mapping with id/text/vector/metadata, not {type(document).__name__}")
    prepared = dict(document)
    if prepared.get("vector") is not None:
        prepared["vector"] = _vector(prepared["vector"])
    if deterministic_ids and prepared.get("id") is None:
        prepared["id"] = document_id(prepared)
    return prepared


def batches(
    documents: Iterable[Mapping[str, Any]], batch_size: int, deterministic_ids: bool
) -> Iterator[list[dict[str, Any]]]:
    """Lazily, lists of at most batch_size prepared documents; one empty list for no documents at all (the
    server answers that with its 422, as it would without the client)."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    source = iter(documents)
    first = True
    while True:
        batch = [prepare(document, deterministic_ids) for document in islice(source, batch_size)]
        if not batch and not first:
            return
        first = False
        yield batch
        if len(batch) < batch_size:
            return


def merge_upserts(results: list[UpsertResult]) -> UpsertResult:
    """One answer for a batched upsert: ids in input order, counts and usage summed, the highest seq."""
    if len(results) == 1:
        return results[0]
    models = [result.model for result in results if result.model is not None]
    return UpsertResult(
        ids=[doc_id for result in results for doc_id in result.ids],
        inserted=sum(result.inserted for result in results),
        updated=sum(result.updated for result in results),
        embeddings_generated=any(result.embeddings_generated for result in results),
        model=models[-1] if models else None,
        usage=Usage(
            total_tokens=sum(result.usage.total_tokens for result in results),
            duration_ms=sum(result.usage.duration_ms for result in results),
        ),
        seq=max((result.seq for result in results), default=0),
    )

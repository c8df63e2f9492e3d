"""The embedding cache: LRU by entries and bytes, keys that separate what must differ, and the router
answering repeated texts without the model."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from prometheus_client import REGISTRY

from akidb.config import EmbeddingSettings
from akidb.embedding.cache import EmbeddingCache, text_key
from akidb.embedding.registry import default_registry
from akidb.embedding.router import EmbeddingRouter


def vector(value: float, dimension: int = 4) -> np.ndarray:
    return np.full(dimension, value, dtype=np.float32)


def test_least_recently_used_entries_go_first() -> None:
    cache = EmbeddingCache(max_entries=2, max_bytes=10**6)
    a, b, c = (text_key("m", "", text) for text in "abc")
    cache.put_many([(a, vector(1), 1), (b, vector(2), 2)])
    assert cache.get_many([a])[0] is not None  # a is now the most recently used
    cache.put_many([(c, vector(3), 3)])
    found = cache.get_many([a, b, c])
    assert found[1] is None, "b was the least recently used"
    assert found[0] is not None
    assert found[0].tokens == 1
    assert found[2] is not None
    assert float(found[2].vector[0]) == 3.0
    assert len(cache) == 2


def test_the_byte_budget_bounds_the_cache() -> None:
    cache = EmbeddingCache(max_entries=1_000, max_bytes=5_000)
    cache.put_many([(text_key("m", "", str(i)), vector(i, 384), 1) for i in range(10)])
    assert 0 < len(cache) < 10
    assert cache.size_bytes <= 5_000


def test_a_cached_vector_cannot_be_changed_through_the_callers_array() -> None:
    cache = EmbeddingCache(max_entries=10, max_bytes=10**6)
    original = vector(1)
    key = text_key("m", "", "a")
    cache.put_many([(key, original, 1)])
    original[:] = 9
    entry = cache.get_many([key])[0]
    assert entry is not None
    assert float(entry.vector[0]) == 1.0
    with pytest.raises(ValueError, match="read-only"):
        entry.vector[0] = 5


def test_keys_differ_by_namespace_prefix_and_text_and_cannot_be_forged_by_joining() -> None:
    keys = {
        text_key("model-a|rev1", "", "text"),
        text_key("model-b|rev1", "", "text"),
        text_key("model-a|rev2", "", "text"),
        text_key("model-a|rev1", "query: ", "text"),
        text_key("model-a|rev1", "", "other"),
        text_key("model-a|rev1", "query: t", "ext"),
    }
    assert len(keys) == 6
    assert text_key("m", "p", "t") == text_key("m", "p", "t")


def test_a_disabled_cache_holds_nothing() -> None:
    cache = EmbeddingCache(max_entries=0, max_bytes=10**6)
    key = text_key("m", "", "a")
    cache.put_many([(key, vector(1), 1)])
    assert cache.get_many([key]) == [None]


def _sample(name: str, model: str) -> float:
    return REGISTRY.get_sample_value(name, {"model": model}) or 0.0


def test_the_router_answers_repeated_texts_from_the_cache_without_the_model() -> None:
    model = "bge-small-en-v1.5"  # a model with a query prefix, so query and document keys differ
    router = EmbeddingRouter(EmbeddingSettings(provider="mock", model=model, batch_timeout_ms=0.0), default_registry())
    try:
        texts = ["alpha", "beta", "alpha", "gamma"]
        embedded_before = _sample("akidb_embed_texts_total", model)
        hits_before = _sample("akidb_embed_cache_hits_total", model)
        first = asyncio.run(router.embed(model, texts, "document"))
        # The repeated "alpha" ran once.
        assert _sample("akidb_embed_texts_total", model) - embedded_before == 3
        second = asyncio.run(router.embed(model, ["gamma", "alpha", "beta"], "document"))
        assert _sample("akidb_embed_texts_total", model) - embedded_before == 3, "all three came from the cache"
        # The repeat within the first request was a miss (the cache did not hold it), though it ran once.
        assert _sample("akidb_embed_cache_hits_total", model) - hits_before == 3
        np.testing.assert_array_equal(second.embeddings.vectors, first.embeddings.vectors[[3, 0, 1]])
        assert second.embeddings.total_tokens == 3
        asyncio.run(router.embed(model, ["alpha"], "query"))
        assert _sample("akidb_embed_texts_total", model) - embedded_before == 4, "a query is not a document"
    finally:
        router.close()

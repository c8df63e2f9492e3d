"""The router: embeds texts with a model through the embedding cache and the model's micro-batcher, under the
embed routes' rules. Which models are in memory, on which backend, is the loader's (embedding/loader.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from akidb import observability
from akidb.config import EmbeddingSettings, LimitsSettings
from akidb.deadline import request_deadline
from akidb.embedding.batching import Lane
from akidb.embedding.cache import EmbeddingCache, text_key
from akidb.embedding.loader import ModelLoader
from akidb.embedding.pooling import fit_dimension
from akidb.embedding.provider import Embeddings
from akidb.embedding.registry import ModelRegistry
from akidb.embedding.spec import InputKind, ModelSpec
from akidb.errors import InvalidRequest, ModelUnavailable, PayloadTooLarge
from akidb.vectors import l2_normalize


@dataclass(frozen=True, slots=True)
class EmbedResult:
    embeddings: Embeddings
    model: str
    duration_ms: float


class EmbeddingRouter:
    def __init__(
        self, settings: EmbeddingSettings, registry: ModelRegistry, *, limits: LimitsSettings | None = None
    ) -> None:
        self.settings = settings
        self.registry = registry
        # What embed_texts accepts per request (inputs, characters per text), checked before any work.
        self.limits = limits if limits is not None else LimitsSettings()
        self.cache = EmbeddingCache(settings.cache_entries, int(settings.cache_mb * 2**20))
        self.models = ModelLoader(settings, registry)

    @property
    def default_model(self) -> str | None:
        return self.models.default_model

    def spec(self, model_id: str) -> ModelSpec:
        return self.registry.get(model_id)

    # --- inference ---

    def lane_for(self, count: int) -> Lane:
        return "interactive" if count <= self.settings.interactive_max_texts else "bulk"

    async def embed(
        self,
        model_id: str,
        texts: Sequence[str],
        kind: InputKind,
        *,
        lane: Lane | None = None,
        dimension: int | None = None,
        normalize: bool | None = None,
    ) -> EmbedResult:
        """Embed through the cache and the model's micro-batcher. `lane` defaults to interactive for up
        to `interactive_max_texts` texts to embed, else bulk; the deadline comes from `request_deadline`.

        `dimension` cuts Matryoshka vectors to a smaller trained size (the one place that does), re-normalised
        if `normalize` (default: the model's own `normalize`)."""
        if not texts:
            empty = np.empty((0, dimension or self.registry.get(model_id).dimension), dtype=np.float32)
            return EmbedResult(Embeddings(vectors=empty, total_tokens=0), model_id, 0.0)
        loop = asyncio.get_running_loop()
        loaded = self.models.acquire(model_id)
        while loaded is None:
            await loop.run_in_executor(None, self.models.load, model_id)
            loaded = self.models.acquire(model_id)  # None only if it was evicted again in between
        try:
            started = time.perf_counter()
            prefix = loaded.provider.spec.prefix_for(kind)
            keys = [text_key(loaded.cache_namespace, prefix, text) for text in texts]
            cached = self.cache.get_many(keys)
            # Texts the cache does not hold, each once (a request may repeat a text).
            missing: dict[bytes, int] = {}
            for row, (key, entry) in enumerate(zip(keys, cached, strict=True)):
                if entry is None and key not in missing:
                    missing[key] = row
            hits = len(texts) - sum(1 for entry in cached if entry is None)
            if hits:
                observability.CACHE_HITS.labels(model_id).inc(hits)
            if len(texts) - hits:
                observability.CACHE_MISSES.labels(model_id).inc(len(texts) - hits)
            fresh: dict[bytes, tuple[np.ndarray, int]] = {}
            if missing:
                to_embed = [texts[row] for row in missing.values()]
                batched = await loaded.batcher.embed(
                    to_embed, kind, lane or self.lane_for(len(to_embed)), request_deadline.get()
                )
                fresh = {
                    key: (vector, tokens)
                    for key, vector, tokens in zip(missing, batched.vectors, batched.tokens, strict=True)
                }
                self.cache.put_many([(key, vector, tokens) for key, (vector, tokens) in fresh.items()])
            sample = next(iter(fresh.values()))[0] if fresh else next(e for e in cached if e is not None).vector
            vectors = np.empty((len(texts), sample.shape[0]), dtype=np.float32)
            total_tokens = 0
            for row, (key, entry) in enumerate(zip(keys, cached, strict=True)):
                vector, tokens = (entry.vector, entry.tokens) if entry is not None else fresh[key]
                vectors[row] = vector
                total_tokens += tokens
            if dimension is not None:
                renormalize = loaded.provider.spec.normalize if normalize is None else normalize
                vectors = fit_dimension(vectors, dimension, renormalize)
            embeddings = Embeddings(vectors=vectors, total_tokens=total_tokens)
            return EmbedResult(embeddings, model_id, (time.perf_counter() - started) * 1000.0)
        finally:
            self.models.release(loaded)

    async def embed_texts(
        self,
        model_id: str | None,
        texts: Sequence[str],
        kind: InputKind,
        *,
        normalize: bool = True,
        dimensions: int | None = None,
        field: str = "inputs",
    ) -> EmbedResult:
        """The embed endpoints' rules: a known model (default if None), at least one text and at most
        `limits.max_inputs_per_embed`, none blank or over `limits.max_text_chars` characters, and `dimensions`
        (if given) one the model was trained for. All checked before any cache lookup or tokenizing."""
        if model_id is None:
            model_id = self.default_model
            if model_id is None:
                raise ModelUnavailable("this server has no default model (embedding.provider=user_provided)")
        spec = self.registry.get(model_id)  # ModelNotFound (404) for an unknown id
        if not texts:
            raise InvalidRequest(f"{field}: send at least one text", extra={"field": field})
        max_inputs, max_chars = self.limits.max_inputs_per_embed, self.limits.max_text_chars
        if len(texts) > max_inputs:
            raise PayloadTooLarge(
                f"{field}: {len(texts)} texts in one request, the limit is {max_inputs} (limits.max_inputs_per_embed)",
                extra={"field": field, "limit": max_inputs},
            )
        for position, text in enumerate(texts):
            if len(text) > max_chars:
                at = f"{field}[{position}]"
                raise PayloadTooLarge(
                    f"{at}: {len(text)} characters in one text, the limit is {max_chars} (limits.max_text_chars)",
                    extra={"field": at, "limit": max_chars},
                )
            if not text.strip():
                raise InvalidRequest(f"{field}[{position}]: text is empty", extra={"field": f"{field}[{position}]"})
        if dimensions is not None and not spec.supports_dimension(dimensions):
            sizes = ", ".join(str(size) for size in sorted({spec.dimension, *spec.matryoshka_dimensions}))
            raise InvalidRequest(
                f"dimensions: {model_id} gives {sizes}, not {dimensions}", extra={"field": "dimensions"}
            )
        result = await self.embed(model_id, texts, kind, dimension=dimensions, normalize=False)
        vectors = result.embeddings.vectors
        if normalize:
            vectors = l2_normalize(vectors)
        embeddings = Embeddings(
            vectors=vectors.astype(np.float32, copy=False), total_tokens=result.embeddings.total_tokens
        )
        return EmbedResult(embeddings, result.model, result.duration_ms)

    def close(self) -> None:
        self.models.close()

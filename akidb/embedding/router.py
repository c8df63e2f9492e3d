"""The model manager: model id -> loaded provider.

Loads lazily (once per model, under a per-model lock), picks the first backend in the configured order
that can run here, measures what each load costs in resident memory, and unloads the least recently used
models past `max_loaded_models` or `max_model_memory_mb`. Inference runs on one worker thread per model.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import importlib.util
import logging
import platform
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from akidb import observability
from akidb.config import EmbeddingSettings, LimitsSettings
from akidb.deadline import request_deadline
from akidb.embedding.batching import Lane, MicroBatcher
from akidb.embedding.cache import EmbeddingCache, text_key
from akidb.embedding.memory import release_freed_memory, resident_bytes
from akidb.embedding.pooling import fit_dimension
from akidb.embedding.provider import (
    EmbeddingProvider,
    Embeddings,
    ProviderFactory,
    ProviderOptions,
    ProviderUnsupported,
    Quantization,
)
from akidb.embedding.registry import ModelRegistry
from akidb.embedding.sources import find_model_files
from akidb.embedding.spec import InputKind, ModelSpec
from akidb.errors import InvalidRequest, ModelUnavailable, PayloadTooLarge
from akidb.vectors import l2_normalize

log = logging.getLogger(__name__)

MODEL_BACKENDS = ("torch", "onnx", "mlx")


@dataclass(frozen=True, slots=True)
class EmbedResult:
    embeddings: Embeddings
    model: str
    duration_ms: float


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """What /api/v1/models reports about a model in memory."""

    model: str
    provider: str
    quantization: str
    # Changes whenever the model's files do; part of the embedding cache's key.
    revision: str
    # The larger of the growth in resident memory over the load and the bytes of the weights held:
    # weights read through mmap only become resident once every page has been touched.
    memory_bytes: int
    resident_growth_bytes: int
    weight_bytes: int
    load_seconds: float


class _Loaded:
    def __init__(self, provider: EmbeddingProvider, info: LoadedModel, settings: EmbeddingSettings) -> None:
        self.provider = provider
        self.info = info
        # One worker thread per model: a provider runs one batch at a time and uses every core for it.
        self.batcher = MicroBatcher(provider, settings, on_exit=provider.close)
        self.cache_namespace = f"{info.model}|{info.revision}|{info.provider}|{info.quantization}"
        self.in_use = 0
        self.last_used = time.monotonic()

    def close_after_pending_work(self) -> None:
        """Queued texts are embedded first; then the provider lets go of its weights."""
        self.batcher.close(wait=False)


def model_revision(path: Path) -> str:
    """A digest of the model folder's file names, sizes and modification times: cheap, and it changes
    when the weights or the tokenizer do."""
    digest = hashlib.blake2b(str(path.resolve()).encode("utf-8"), digest_size=8)
    for file in sorted(item for item in path.rglob("*") if item.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def _forget_memory(model_id: str) -> None:
    """Drop an unloaded model's akidb_model_memory_bytes series."""
    with contextlib.suppress(KeyError):
        observability.MODEL_MEMORY.remove(model_id)


def _weight_bytes(provider: EmbeddingProvider) -> int:
    """What the backend says its weights take (0 if it cannot say)."""
    measure = getattr(provider, "weight_bytes", None)
    if not callable(measure):
        return 0
    try:
        return int(measure())
    except Exception:  # a diagnostic only: never fail a load over it
        log.debug("weight_bytes() failed for %s", provider.spec.id, exc_info=True)
        return 0


@functools.cache
def detect_backends() -> tuple[str, ...]:
    """The best backend order for this machine: MLX with Metal on Apple silicon; torch where a CUDA GPU
    is; ONNX Runtime on other CPUs (faster than torch there), then torch."""
    if sys.platform == "darwin" and platform.machine() == "arm64" and importlib.util.find_spec("mlx"):
        return ("mlx", "onnx", "torch")
    if importlib.util.find_spec("torch"):
        import torch

        if torch.cuda.is_available():
            return ("torch", "onnx")
    return ("onnx", "torch")


def backend_factory(name: str) -> ProviderFactory:
    """The constructor of a model backend, imported only when asked for."""
    if name == "torch":
        from akidb.embedding.providers.torch import TorchProvider

        return TorchProvider
    if name == "onnx":
        from akidb.embedding.providers.onnx import OnnxProvider

        return OnnxProvider
    if name == "mlx":
        from akidb.embedding.providers.mlx import MlxProvider

        return MlxProvider
    raise ProviderUnsupported(f"unknown embedding provider '{name}'")


class EmbeddingRouter:
    def __init__(
        self, settings: EmbeddingSettings, registry: ModelRegistry, *, limits: LimitsSettings | None = None
    ) -> None:
        self.settings = settings
        self.registry = registry
        # What embed_texts accepts per request (inputs, characters per text), checked before any work.
        self.limits = limits if limits is not None else LimitsSettings()
        self.cache = EmbeddingCache(settings.cache_entries, int(settings.cache_mb * 2**20))
        self._loaded: dict[str, _Loaded] = {}
        self._load_locks: dict[str, threading.Lock] = {}
        # Guards _loaded, in_use and last_used; never held while loading or inferring.
        self._guard = threading.Lock()
        # Loads run one at a time, so each one's memory delta is its own.
        self._measure_lock = threading.Lock()

    @property
    def default_model(self) -> str | None:
        return None if self.settings.provider == "user_provided" else self.settings.model

    def spec(self, model_id: str) -> ModelSpec:
        return self.registry.get(model_id)

    def is_loaded(self, model_id: str) -> bool:
        return model_id in self._loaded

    def loaded_info(self, model_id: str) -> LoadedModel | None:
        loaded = self._loaded.get(model_id)
        return loaded.info if loaded else None

    def loaded_models(self) -> list[LoadedModel]:
        with self._guard:
            return [loaded.info for loaded in self._loaded.values()]

    def is_available(self, model_id: str) -> bool:
        """Can the model run here without a download?"""
        if self.settings.provider == "mock":
            return True
        if self.settings.provider == "user_provided":
            return False
        return find_model_files(self.registry.get(model_id), self.settings.model_dir) is not None

    # --- choosing a backend ---

    def backend_order(self, spec: ModelSpec) -> list[str]:
        """The configured order (auto expanded for this machine), narrowed to the backends that can serve
        this model."""
        order: list[str] = []
        for name in self.settings.provider_order():
            for backend in detect_backends() if name == "auto" else [name]:
                if backend not in order:
                    order.append(backend)
        if spec.providers:
            order = [name for name in order if name in spec.providers] + [
                name for name in spec.providers if name not in order
            ]
        return order

    def quantization_for(self, spec: ModelSpec) -> Quantization:
        """The configured quantization; a model whose weights ship quantized keeps its own."""
        if self.settings.quantization == "fp32" and spec.default_quantization in ("fp16", "int8", "int4"):
            return spec.default_quantization  # type: ignore[return-value]
        return self.settings.quantization

    def _build(self, spec: ModelSpec) -> tuple[EmbeddingProvider, str]:
        """The provider and the revision of the files it loaded."""
        provider = self.settings.provider
        if provider == "mock":
            from akidb.embedding.providers.mock import MockProvider

            return MockProvider(spec), "mock"
        if provider == "user_provided":
            raise ModelUnavailable("this server runs with embedding.provider=user_provided: send vectors, not text")
        path = find_model_files(spec, self.settings.model_dir)
        if path is None:
            raise ModelUnavailable(
                f"model '{spec.id}' has no local files: put them under embedding.model_dir, "
                f"or run `akidb models pull {spec.id}` on a machine with network access"
            )
        options = self._options(spec)
        reasons: list[str] = []
        for name in self.backend_order(spec):
            try:
                return backend_factory(name)(spec, path, options), model_revision(path)
            except ProviderUnsupported as exc:
                reasons.append(exc.detail if exc.detail.startswith(f"{name}:") else f"{name}: {exc.detail}")
                log.warning("model %s cannot run on %s here: %s", spec.id, name, exc.detail)
        tried = "; ".join(reasons)
        hint = "" if self.settings.fallback else " (embedding.fallback is off)"
        raise ProviderUnsupported(f"model '{spec.id}': no backend can run it here{hint}: {tried}")

    def _options(self, spec: ModelSpec) -> ProviderOptions:
        return ProviderOptions(
            device=self.settings.device,
            quantization=self.quantization_for(spec),
            num_threads=self.settings.num_threads,
            batch_size=self.settings.batch_size,
            cache_dir=Path(self.settings.resolved_cache_dir),
        )

    # --- loading and unloading ---

    def load(self, model_id: str) -> EmbeddingProvider:
        """Blocking: load and warm the model if needed. Concurrent first callers load it once."""
        loaded = self._loaded.get(model_id)
        if loaded is not None:
            return loaded.provider
        spec = self.registry.get(model_id)
        with self._guard:
            lock = self._load_locks.setdefault(model_id, threading.Lock())
        with lock:
            loaded = self._loaded.get(model_id)
            if loaded is not None:
                return loaded.provider
            observability.init_model_series(model_id)
            with self._measure_lock:
                release_freed_memory()
                before = resident_bytes()
                started = time.perf_counter()
                try:
                    provider, revision = self._build(spec)
                    provider.warmup()
                except Exception:
                    observability.MODEL_LOAD_FAILURES.labels(model_id).inc()
                    raise
                seconds = time.perf_counter() - started
                growth = max(resident_bytes() - before, 0)
            weights = _weight_bytes(provider)
            memory = max(growth, weights)
            quantization = str(getattr(provider, "quantization", self.quantization_for(spec)))
            info = LoadedModel(model_id, provider.name, quantization, revision, memory, growth, weights, seconds)
            loaded = _Loaded(provider, info, self.settings)
            with self._guard:
                self._loaded[model_id] = loaded
            observability.MODEL_MEMORY.labels(model_id).set(memory)
            log.info(
                "loaded model %s with %s (%s) in %.1fs, %.0f MiB resident",
                model_id,
                provider.name,
                quantization,
                seconds,
                memory / 2**20,
            )
        self._evict(keep=model_id)
        return loaded.provider

    def _evict(self, keep: str) -> None:
        """Unload least recently used idle models until both limits hold again."""
        budget = self.settings.max_model_memory_mb * 2**20
        evicted: list[_Loaded] = []
        with self._guard:
            while True:
                count = len(self._loaded)
                memory = sum(loaded.info.memory_bytes for loaded in self._loaded.values())
                over = count > self.settings.max_loaded_models or (budget > 0 and memory > budget)
                if not over:
                    break
                idle = [(m.last_used, mid) for mid, m in self._loaded.items() if mid != keep and m.in_use == 0]
                if not idle:
                    log.warning("model limits exceeded (%d loaded, %.0f MiB), but every model is busy", count, memory)
                    break
                _, victim = min(idle)
                evicted.append(self._loaded.pop(victim))
        for loaded in evicted:
            log.info("unloading model %s (least recently used)", loaded.info.model)
            _forget_memory(loaded.info.model)
            loaded.close_after_pending_work()
        if evicted:
            release_freed_memory()

    def unload(self, model_id: str) -> bool:
        """Unload a model now (its queued work finishes first). False if it was not loaded."""
        self.registry.get(model_id)
        with self._guard:
            loaded = self._loaded.pop(model_id, None)
        if loaded is None:
            return False
        _forget_memory(model_id)
        loaded.close_after_pending_work()
        release_freed_memory()
        log.info("unloaded model %s", model_id)
        return True

    def _acquire(self, model_id: str) -> _Loaded | None:
        with self._guard:
            loaded = self._loaded.get(model_id)
            if loaded is not None:
                loaded.in_use += 1
                loaded.last_used = time.monotonic()
            return loaded

    def _release(self, loaded: _Loaded) -> None:
        with self._guard:
            loaded.in_use -= 1

    # --- inference ---

    def lane_for(self, count: int) -> Lane:
        return "interactive" if count <= self.settings.interactive_max_texts else "bulk"

    async def embed(
        self, model_id: str, texts: Sequence[str], kind: InputKind, *, lane: Lane | None = None
    ) -> EmbedResult:
        """Embed through the cache and the model's micro-batcher. `lane` defaults to interactive for up
        to `interactive_max_texts` texts to embed, else bulk; the deadline comes from `request_deadline`."""
        if not texts:
            empty = np.empty((0, self.registry.get(model_id).dimension), dtype=np.float32)
            return EmbedResult(Embeddings(vectors=empty, total_tokens=0), model_id, 0.0)
        loop = asyncio.get_running_loop()
        loaded = self._acquire(model_id)
        while loaded is None:
            await loop.run_in_executor(None, self.load, model_id)
            loaded = self._acquire(model_id)  # None only if it was evicted again in between
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
            embeddings = Embeddings(vectors=vectors, total_tokens=total_tokens)
            return EmbedResult(embeddings, model_id, (time.perf_counter() - started) * 1000.0)
        finally:
            self._release(loaded)

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
        result = await self.embed(model_id, texts, kind)
        vectors = result.embeddings.vectors
        if dimensions is not None:
            vectors = fit_dimension(vectors, dimensions, normalize=False)
        if normalize:
            vectors = l2_normalize(vectors)
        embeddings = Embeddings(
            vectors=vectors.astype(np.float32, copy=False), total_tokens=result.embeddings.total_tokens
        )
        return EmbedResult(embeddings, result.model, result.duration_ms)

    def close(self) -> None:
        with self._guard:
            loaded_models = list(self._loaded.values())
            self._loaded.clear()
        for loaded in loaded_models:
            loaded.batcher.close(wait=True)  # drains the queue, then closes the provider

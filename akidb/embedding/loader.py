"""The model loader: model id -> loaded provider, with its micro-batcher.

Loads lazily (once per model, under a per-model lock), picks the first backend in the configured order
that can run here, measures what each load costs in resident memory, and unloads the least recently used
models past `max_loaded_models` or `max_model_memory_mb`. Inference runs on one worker thread per model.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import logging
import platform
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from akidb import observability
from akidb.config import EmbeddingSettings
from akidb.embedding.batching import MicroBatcher
from akidb.embedding.memory import release_freed_memory, resident_bytes
from akidb.embedding.provider import (
    EmbeddingProvider,
    ProviderFactory,
    ProviderOptions,
    ProviderUnsupported,
    Quantization,
)
from akidb.embedding.registry import ModelRegistry
from akidb.embedding.sources import find_model_files
from akidb.embedding.spec import ModelSpec
from akidb.errors import ModelUnavailable

log = logging.getLogger(__name__)

MODEL_BACKENDS = ("torch", "onnx", "mlx")


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


class Loaded:
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


class ModelLoader:
    def __init__(self, settings: EmbeddingSettings, registry: ModelRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self._loaded: dict[str, Loaded] = {}
        self._load_locks: dict[str, threading.Lock] = {}
        # Guards _loaded, in_use and last_used; never held while loading or inferring.
        self._guard = threading.Lock()
        # Loads run one at a time, so each one's memory delta is its own.
        self._measure_lock = threading.Lock()

    @property
    def default_model(self) -> str | None:
        return None if self.settings.provider == "user_provided" else self.settings.model

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
            loaded = Loaded(provider, info, self.settings)
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
        evicted: list[Loaded] = []
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

    def acquire(self, model_id: str) -> Loaded | None:
        with self._guard:
            loaded = self._loaded.get(model_id)
            if loaded is not None:
                loaded.in_use += 1
                loaded.last_used = time.monotonic()
            return loaded

    def release(self, loaded: Loaded) -> None:
        with self._guard:
            loaded.in_use -= 1

    def close(self) -> None:
        with self._guard:
            loaded_models = list(self._loaded.values())
            self._loaded.clear()
        for loaded in loaded_models:
            loaded.batcher.close(wait=True)  # drains the queue, then closes the provider

"""Model id -> loaded provider. Loads lazily (once, under a per-model lock) and runs inference off the loop."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from akidb.config import EmbeddingSettings
from akidb.embedding.provider import EmbeddingProvider, Embeddings, ProviderOptions
from akidb.embedding.registry import ModelRegistry
from akidb.embedding.sources import find_model_files
from akidb.embedding.spec import InputKind, ModelSpec
from akidb.errors import InvalidRequest, ModelUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EmbedResult:
    embeddings: Embeddings
    model: str
    duration_ms: float


class _Loaded:
    def __init__(self, provider: EmbeddingProvider) -> None:
        self.provider = provider
        # One worker per model: a provider runs one batch at a time and uses every core for it.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embed-{provider.spec.id}")


class EmbeddingRouter:
    def __init__(self, settings: EmbeddingSettings, registry: ModelRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self._loaded: dict[str, _Loaded] = {}
        self._load_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    @property
    def default_model(self) -> str | None:
        return None if self.settings.provider == "user_provided" else self.settings.model

    def spec(self, model_id: str) -> ModelSpec:
        return self.registry.get(model_id)

    def is_loaded(self, model_id: str) -> bool:
        return model_id in self._loaded

    def is_available(self, model_id: str) -> bool:
        """Can the model run here without a download?"""
        if self.settings.provider == "mock":
            return True
        if self.settings.provider == "user_provided":
            return False
        return find_model_files(self.registry.get(model_id), self.settings.model_dir) is not None

    def _build(self, spec: ModelSpec) -> EmbeddingProvider:
        provider = self.settings.provider
        if provider == "mock":
            from akidb.embedding.providers.mock import MockProvider

            return MockProvider(spec)
        if provider == "user_provided":
            raise ModelUnavailable("this server runs with embedding.provider=user_provided: send vectors, not text")
        if provider != "torch":
            raise ModelUnavailable(f"embedding provider '{provider}' is not available in this build; use torch")
        path = find_model_files(spec, self.settings.model_dir)
        if path is None:
            raise ModelUnavailable(
                f"model '{spec.id}' has no local files: put them under embedding.model_dir, "
                f"or run `akidb models pull {spec.id}` on a machine with network access"
            )
        from akidb.embedding.providers.torch import TorchProvider

        return TorchProvider(
            spec,
            path,
            ProviderOptions(
                device=self.settings.device,
                num_threads=self.settings.num_threads,
                batch_size=self.settings.batch_size,
                quantization=self.settings.quantization,
            ),
        )

    def load(self, model_id: str) -> EmbeddingProvider:
        """Blocking: load the model if needed. Concurrent first callers load it once."""
        loaded = self._loaded.get(model_id)
        if loaded is not None:
            return loaded.provider
        spec = self.registry.get(model_id)
        with self._locks_guard:
            lock = self._load_locks.setdefault(model_id, threading.Lock())
        with lock:
            loaded = self._loaded.get(model_id)
            if loaded is None:
                started = time.perf_counter()
                provider = self._build(spec)
                provider.warmup()
                loaded = _Loaded(provider)
                self._loaded[model_id] = loaded
                log.info("loaded model %s with %s in %.1fs", model_id, provider.name, time.perf_counter() - started)
        return loaded.provider

    async def embed(self, model_id: str, texts: Sequence[str], kind: InputKind) -> EmbedResult:
        loop = asyncio.get_running_loop()
        if model_id not in self._loaded:
            await loop.run_in_executor(None, self.load, model_id)
        loaded = self._loaded[model_id]
        started = time.perf_counter()
        embeddings = await loop.run_in_executor(loaded.executor, loaded.provider.embed, list(texts), kind)
        return EmbedResult(embeddings, model_id, (time.perf_counter() - started) * 1000.0)

    async def embed_texts(
        self, model_id: str | None, texts: Sequence[str], kind: InputKind, *, normalize: bool = True
    ) -> EmbedResult:
        """The /embed rules: a known model (default if None), at least one text, none of them blank."""
        if model_id is None:
            model_id = self.default_model
            if model_id is None:
                raise ModelUnavailable("this server has no default model (embedding.provider=user_provided)")
        self.registry.get(model_id)  # ModelNotFound (404) for an unknown id
        if not texts:
            raise InvalidRequest("inputs: send at least one text", extra={"field": "inputs"})
        for position, text in enumerate(texts):
            if not text.strip():
                raise InvalidRequest(f"inputs[{position}]: text is empty", extra={"field": f"inputs[{position}]"})
        result = await self.embed(model_id, texts, kind)
        if normalize:
            vectors = result.embeddings.vectors
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return result

    def close(self) -> None:
        for loaded in self._loaded.values():
            loaded.executor.shutdown(wait=True)
            loaded.provider.close()
        self._loaded.clear()

"""The model manager: lazy loads, one load under concurrency, LRU unloading by count and by measured
memory, backend fallback, and several models served side by side. Real models (tiny ones and MiniLM)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import msgspec
import numpy as np
import pytest

from akidb.config import EmbeddingSettings
from akidb.embedding.provider import ProviderUnsupported
from akidb.embedding.registry import ModelRegistry, default_registry
from akidb.embedding.router import EmbeddingRouter
from tests.tiny_models import TINY_ARCHITECTURES, TinyModel, build_tiny_model

CACHE = Path(__file__).resolve().parents[2] / ".cache" / "akidb-tests"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyModel]:
    root = tmp_path_factory.mktemp("tiny")
    return {name: build_tiny_model(name, root) for name in TINY_ARCHITECTURES}


def registry_with(tiny: dict[str, TinyModel]) -> ModelRegistry:
    specs = [msgspec.structs.replace(t.spec, local_path=str(t.path)) for t in tiny.values()]
    return ModelRegistry([*default_registry(), *specs])


def router(tiny: dict[str, TinyModel], **settings: object) -> EmbeddingRouter:
    embedding = msgspec.convert({"cache_dir": str(CACHE), **settings}, EmbeddingSettings)
    return EmbeddingRouter(embedding, registry_with(tiny))


def test_models_load_lazily_and_are_reported(tiny: dict[str, TinyModel]) -> None:
    manager = router(tiny, provider="torch")
    try:
        assert not manager.models.is_loaded("tiny-bert")
        assert manager.models.is_available("tiny-bert")
        result = asyncio.run(manager.embed("tiny-bert", ["hello"], "document"))
        assert result.embeddings.vectors.shape == (1, 32)
        info = manager.models.loaded_info("tiny-bert")
        assert info is not None
        assert (info.provider, info.quantization) == ("torch", "fp32")
        assert info.load_seconds > 0
    finally:
        manager.close()


def test_concurrent_first_requests_load_once(tiny: dict[str, TinyModel]) -> None:
    manager = router(tiny, provider="torch")
    providers: list[object] = []
    start = threading.Barrier(8)

    def first_request() -> None:
        start.wait()
        providers.append(manager.models.load("tiny-qwen3"))

    threads = [threading.Thread(target=first_request) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(providers) == 8
        assert len({id(provider) for provider in providers}) == 1
    finally:
        manager.close()


def test_least_recently_used_is_unloaded_past_max_loaded_models(tiny: dict[str, TinyModel]) -> None:
    manager = router(tiny, provider="torch", max_loaded_models=2)

    async def use(model: str) -> None:
        await manager.embed(model, ["some text"], "document")

    try:
        asyncio.run(use("tiny-bert"))
        asyncio.run(use("tiny-qwen3"))
        asyncio.run(use("tiny-bert"))  # tiny-qwen3 is now the least recently used
        asyncio.run(use("tiny-gemma3"))
        assert {m.model for m in manager.models.loaded_models()} == {"tiny-bert", "tiny-gemma3"}
        asyncio.run(use("tiny-qwen3"))  # loads again on demand
        assert {m.model for m in manager.models.loaded_models()} == {"tiny-gemma3", "tiny-qwen3"}
    finally:
        manager.close()


def test_memory_is_measured_and_the_budget_unloads(tiny: dict[str, TinyModel]) -> None:
    # MiniLM's fp32 weights are 87 MiB; the resident cost of loading it must show that.
    manager = router(tiny, provider="torch", max_model_memory_mb=60)
    try:
        manager.models.load("tiny-bert")
        manager.models.load("all-MiniLM-L6-v2")
        info = manager.models.loaded_info("all-MiniLM-L6-v2")
        assert info is not None
        assert info.memory_bytes > 60 * 2**20, f"measured only {info.memory_bytes / 2**20:.0f} MiB"
        # The two together exceed 60 MiB: the least recently used one (tiny-bert) made room.
        assert [m.model for m in manager.models.loaded_models()] == ["all-MiniLM-L6-v2"]
        # A model alone over the budget still serves (it is the one asked for).
        vectors = asyncio.run(manager.embed("all-MiniLM-L6-v2", ["still here"], "document")).embeddings.vectors
        assert vectors.shape == (1, 384)
    finally:
        manager.close()


def test_unload_frees_the_model_and_the_next_request_reloads(tiny: dict[str, TinyModel]) -> None:
    manager = router(tiny, provider="torch")
    try:
        first = asyncio.run(manager.embed("tiny-gemma3", ["text"], "document")).embeddings.vectors
        assert manager.models.unload("tiny-gemma3") is True
        assert manager.models.unload("tiny-gemma3") is False
        assert not manager.models.is_loaded("tiny-gemma3")
        again = asyncio.run(manager.embed("tiny-gemma3", ["text"], "document")).embeddings.vectors
        np.testing.assert_allclose(first, again, atol=1e-6)
    finally:
        manager.close()


def test_falls_back_when_the_backend_cannot_run_here(tiny: dict[str, TinyModel]) -> None:
    # torch offers no int4; mlx does: the configured order goes on to mlx and says why in the log.
    manager = router(tiny, provider="torch", quantization="int4", fallback_order=["mlx"])
    try:
        manager.models.load("tiny-bert")
        info = manager.models.loaded_info("tiny-bert")
        assert info is not None
        assert (info.provider, info.quantization) == ("mlx", "int4")
    finally:
        manager.close()


def test_without_fallback_the_reason_is_the_error(tiny: dict[str, TinyModel]) -> None:
    manager = router(tiny, provider="torch", quantization="int4", fallback=False)
    with pytest.raises(ProviderUnsupported) as info:
        manager.models.load("tiny-bert")
    assert "fallback is off" in info.value.detail
    assert "torch: " in info.value.detail
    assert "int4" in info.value.detail
    assert not manager.models.is_loaded("tiny-bert")


def test_every_backend_failing_lists_each_reason(tiny: dict[str, TinyModel]) -> None:
    manager = router(tiny, provider="mlx", device="cuda", fallback_order=["onnx", "torch"])
    with pytest.raises(ProviderUnsupported) as info:
        manager.models.load("tiny-bert")
    for backend in ("mlx: ", "onnx: ", "torch: "):
        assert backend in info.value.detail


def test_models_of_different_backends_serve_side_by_side(tiny: dict[str, TinyModel]) -> None:
    """Two models at once, each on its own worker, embedding concurrently."""
    manager = router(tiny, provider="onnx")

    async def both() -> tuple[np.ndarray, np.ndarray]:
        minilm, bert = await asyncio.gather(
            manager.embed("all-MiniLM-L6-v2", ["a cat sat on the mat"] * 20, "document"),
            manager.embed("tiny-bert", ["a cat sat on the mat"] * 20, "document"),
        )
        return minilm.embeddings.vectors, bert.embeddings.vectors

    try:
        minilm, bert = asyncio.run(both())
        assert minilm.shape == (20, 384)
        assert bert.shape == (20, 32)
        assert {m.model for m in manager.models.loaded_models()} == {"all-MiniLM-L6-v2", "tiny-bert"}
        assert {m.provider for m in manager.models.loaded_models()} == {"onnx"}
    finally:
        manager.close()


def test_auto_picks_the_backend_for_this_machine(tiny: dict[str, TinyModel]) -> None:
    import sys

    import torch

    from akidb.embedding.loader import detect_backends

    if sys.platform.startswith("linux") and not torch.cuda.is_available():
        assert detect_backends() == ("onnx", "torch")  # a CPU-only Linux machine, like CI's
    manager = router(tiny, provider="auto")
    try:
        assert manager.models.backend_order(tiny["bert"].spec)[: len(detect_backends())] == list(detect_backends())
        manager.models.load("tiny-bert")
        info = manager.models.loaded_info("tiny-bert")
        assert info is not None
        assert info.provider == detect_backends()[0]
    finally:
        manager.close()


def test_a_model_for_one_backend_goes_to_it() -> None:
    settings = msgspec.convert({"provider": "onnx", "fallback_order": ["torch"]}, EmbeddingSettings)
    manager = EmbeddingRouter(settings, default_registry())
    assert manager.models.backend_order(default_registry().get("qwen3-0.6b-4bit")) == ["mlx"]
    assert manager.models.quantization_for(default_registry().get("qwen3-0.6b-4bit")) == "int4"
    assert manager.models.backend_order(default_registry().get("all-MiniLM-L6-v2")) == ["onnx", "torch"]

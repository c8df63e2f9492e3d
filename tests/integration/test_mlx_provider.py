"""The mlx provider: tiny models of each architecture against the torch provider, MLX-quantized folders,
weight sizes per quantization, devices. MiniLM against sentence-transformers is the conformance suite's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from akidb.embedding.provider import ProviderOptions, ProviderUnsupported
from akidb.embedding.providers.mlx import MlxProvider, save_quantized
from akidb.embedding.providers.torch import TorchProvider
from akidb.embedding.registry import default_registry
from tests.tiny_models import TINY_ARCHITECTURES, TinyModel, build_tiny_model, minilm_path

Matrix = npt.NDArray[np.float32]
CPU = ProviderOptions(device="cpu")
TEXTS = [
    "one",
    "a somewhat longer sentence, so that the batch has padding in it",
    "three little words",
    # Longer than the tiny Gemma3's sliding window (16: every token sees 8 either side), so it matters.
    "the quick brown fox jumps over the lazy dog again and again and again and again",
]


def cosines(a: Matrix, b: Matrix) -> Matrix:
    result: Matrix = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return result


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyModel]:
    root = tmp_path_factory.mktemp("tiny-mlx")
    # The Gemma3 one ends in sentence-transformers Dense layers, as EmbeddingGemma does.
    return {name: build_tiny_model(name, root, dense_head=name == "gemma3") for name in TINY_ARCHITECTURES}


@pytest.mark.parametrize("name", TINY_ARCHITECTURES)
def test_tiny_models_agree_with_torch(tiny: dict[str, TinyModel], name: str) -> None:
    model = tiny[name]
    ours, theirs = MlxProvider(model.spec, model.path, CPU), TorchProvider(model.spec, model.path, CPU)
    assert (ours.name, ours.device, ours.quantization) == ("mlx", "cpu", "fp32")
    for kind in ("query", "document"):
        batch = ours.embed(TEXTS, kind).vectors  # one batch, right-padded to the longest text
        assert batch.shape == (len(TEXTS), model.spec.dimension)
        assert batch.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
        agreement = cosines(batch, theirs.embed(TEXTS, kind).vectors)
        assert agreement.min() >= 0.999, f"{name}/{kind}: mlx vs torch {agreement.min():.6f}"
        singles = np.stack([ours.embed([text], kind).vectors[0] for text in TEXTS])
        assert cosines(batch, singles).min() >= 0.9999, f"{name}/{kind}: padding changed a vector"
    if model.spec.query_prefix != model.spec.document_prefix:
        query, document = ours.embed(TEXTS[:1], "query").vectors, ours.embed(TEXTS[:1], "document").vectors
        assert cosines(query, document)[0] < 0.999, "the prefix changed nothing"
    ours.close()
    with pytest.raises(ProviderUnsupported, match="closed"):
        ours.embed(["after close"], "document")


@pytest.mark.parametrize(("name", "bits"), [("bert", 8), ("qwen3", 4), ("gemma3", 4)])
def test_prequantized_folder_loads_like_quantizing_on_the_fly(
    tiny: dict[str, TinyModel], tmp_path: Path, name: str, bits: int
) -> None:
    model = tiny[name]
    folder = save_quantized(model.path, tmp_path / f"{name}-{bits}bit", bits)
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization"]["bits"] == bits
    if name == "gemma3":  # Dense layers stay in their own folders, full precision, for the shared head
        assert (folder / "2_Dense" / "model.safetensors").is_file()

    stored = MlxProvider(model.spec, folder, CPU)  # fp32 asked for; the folder's bits win
    on_the_fly = MlxProvider(model.spec, model.path, ProviderOptions(device="cpu", quantization=f"int{bits}"))
    full = MlxProvider(model.spec, model.path, CPU)
    assert stored.quantization == on_the_fly.quantization == f"int{bits}"
    assert stored.weight_bytes() == on_the_fly.weight_bytes() < full.weight_bytes() / 2
    vectors = stored.embed(TEXTS, "query").vectors
    assert cosines(vectors, on_the_fly.embed(TEXTS, "query").vectors).min() >= 0.99999
    # Quantized, so not identical to fp32, but close.
    agreement = cosines(vectors, full.embed(TEXTS, "query").vectors)
    assert agreement.min() >= 0.9
    assert agreement.max() < 0.99999


def test_dense_layers_inside_the_mlx_weights(tiny: dict[str, TinyModel], tmp_path: Path) -> None:
    """mlx-community's EmbeddingGemma keeps its Dense layers, quantized, in model.safetensors."""
    import mlx.core as mx

    model = tiny["gemma3"]
    folder = save_quantized(model.path, tmp_path / "gemma3-8bit", 8, dense_in_weights=True)
    assert not (folder / "2_Dense" / "model.safetensors").exists()
    # 32 -> 48 is quantized (with its bias); 48 -> 32 is not, as 32 does not divide 48.
    assert {"dense.0.scales", "dense.0.bias", "dense.1.weight"} <= set(mx.load(str(folder / "model.safetensors")))
    stored = MlxProvider(model.spec, folder, CPU)
    reference = TorchProvider(model.spec, model.path, CPU)
    agreement = cosines(stored.embed(TEXTS, "document").vectors, reference.embed(TEXTS, "document").vectors)
    assert agreement.min() >= 0.999, f"8-bit with in-weights Dense vs torch fp32: {agreement.min():.6f}"


def test_minilm_weights_shrink_with_quantization() -> None:
    spec = default_registry().get("all-MiniLM-L6-v2")
    sizes, vectors = {}, {}
    for quantization in ("fp32", "fp16", "int8", "int4"):
        provider = MlxProvider(spec, minilm_path(), ProviderOptions(device="cpu", quantization=quantization))
        assert provider.quantization == quantization
        sizes[quantization] = provider.weight_bytes()
        vectors[quantization] = provider.embed(["The cat sat on the mat."], "document").vectors
    assert 90_000_000 < sizes["fp32"] < 92_000_000  # 22.7M parameters in float32
    assert sizes["fp16"] == sizes["fp32"] // 2
    assert sizes["int8"] < 0.32 * sizes["fp32"]
    assert sizes["int4"] < 0.22 * sizes["fp32"]
    for quantization in ("fp16", "int8", "int4"):
        assert cosines(vectors[quantization], vectors["fp32"])[0] > 0.95, quantization


@pytest.mark.parametrize("device", ["gpu", "mps", "metal", "cuda", "cuda:0", "tpu"])
def test_a_device_mlx_cannot_use_is_unsupported(tiny: dict[str, TinyModel], device: str) -> None:
    import mlx.core as mx

    if device in {"gpu", "mps", "metal"} and mx.metal.is_available():
        pytest.skip("this machine has a Metal GPU")
    model = tiny["bert"]
    with pytest.raises(ProviderUnsupported, match=f"'{device}'"):
        MlxProvider(model.spec, model.path, ProviderOptions(device=device))


def test_an_unknown_architecture_is_unsupported(tiny: dict[str, TinyModel], tmp_path: Path) -> None:
    folder = shutil.copytree(tiny["bert"].path, tmp_path / "t5")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    with pytest.raises(ProviderUnsupported, match="'t5' is not supported"):
        MlxProvider(tiny["bert"].spec, folder, CPU)


def test_without_mlx_the_module_imports_and_the_provider_names_the_extra() -> None:
    script = """
import sys
from pathlib import Path
sys.modules["mlx"] = None  # as if not installed
from akidb.embedding.providers.mlx import MlxProvider
from akidb.embedding.provider import ProviderOptions, ProviderUnsupported
from akidb.embedding.registry import default_registry
try:
    MlxProvider(default_registry().get("all-MiniLM-L6-v2"), Path("."), ProviderOptions())
except ProviderUnsupported as exc:
    print(exc)
"""
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=True)
    assert "pip install 'akidb[mlx]'" in result.stdout, result.stdout + result.stderr

"""The ONNX Runtime provider: export once and cache, int8, devices, and agreement with the torch provider.

Exports are slow (10-15 s each on two cores), so every model is exported at most once per quantization
in this file, into one module-wide cache folder.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import akidb.embedding.providers.onnx as onnx_provider
from akidb.embedding.provider import EmbeddingProvider, ProviderOptions, ProviderUnsupported
from akidb.embedding.providers.onnx import (
    EXPORT_RECIPE,
    OPSET,
    OnnxProvider,
    model_files_digest,
    pick_execution_provider,
)
from akidb.embedding.providers.torch import TorchProvider
from akidb.embedding.registry import default_registry
from tests.tiny_models import TINY_ARCHITECTURES, build_tiny_model, minilm_path

MINILM = default_registry().get("all-MiniLM-L6-v2")
REPO_ROOT = Path(__file__).resolve().parents[2]
MIXED_TEXTS = [
    "a",
    "Paris in spring",
    "vector databases keep embeddings in memory and search them by cosine similarity",
    "the quick brown fox jumps over the lazy dog " * 8,  # past the tiny models' 64-token window
    "hello world",
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen",
]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def minilm() -> Path:
    return minilm_path()


@pytest.fixture(scope="module")
def fp32(minilm: Path, cache_dir: Path) -> OnnxProvider:
    return OnnxProvider(MINILM, minilm, ProviderOptions(device="cpu", cache_dir=cache_dir))


@pytest.fixture(scope="module")
def int8(minilm: Path, cache_dir: Path, fp32: OnnxProvider) -> OnnxProvider:
    # Depends on fp32 so that the fp32 export is already cached and only the quantization runs.
    return OnnxProvider(MINILM, minilm, ProviderOptions(device="cpu", cache_dir=cache_dir, quantization="int8"))


@pytest.fixture(scope="module")
def torch_minilm(minilm: Path) -> TorchProvider:
    return TorchProvider(MINILM, minilm, ProviderOptions(device="cpu"))


@pytest.fixture(scope="module")
def stsb_texts(shared_data: Path) -> list[str]:
    """Both sentences of the first 48 STS-B dev pairs: 96 texts of mixed lengths."""
    with open(shared_data / "stsb-dev.tsv", newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE) if row[0] != "score"]
    return [text for _, first, second in rows[:48] for text in (first, second)]


def test_is_an_embedding_provider_on_the_cpu(fp32: OnnxProvider) -> None:
    assert isinstance(fp32, EmbeddingProvider)
    assert fp32.name == "onnx"
    assert fp32.spec is MINILM
    assert fp32.execution_provider == "CPUExecutionProvider"
    assert fp32.graph_path.is_file()
    assert fp32.max_length == 256


def test_minilm_fp32_matches_torch(fp32: OnnxProvider, torch_minilm: TorchProvider, stsb_texts: list[str]) -> None:
    texts = stsb_texts + MIXED_TEXTS
    ours = fp32.embed(texts, "document")
    reference = torch_minilm.embed(texts, "document")
    assert ours.vectors.shape == (len(texts), 384)
    assert ours.vectors.dtype == np.float32
    assert ours.total_tokens == reference.total_tokens
    np.testing.assert_allclose(np.linalg.norm(ours.vectors, axis=1), 1.0, atol=1e-5)
    worst = cosines(ours.vectors, reference.vectors).min()
    assert worst >= 0.9999, f"worst cosine {worst:.6f}"


def test_minilm_batch_equals_singles(fp32: OnnxProvider) -> None:
    batch = fp32.embed(MIXED_TEXTS, "query").vectors
    singles = np.stack([fp32.embed([text], "query").vectors[0] for text in MIXED_TEXTS])
    assert cosines(batch, singles).min() > 0.99999


def test_int8_is_close_to_fp32_and_much_smaller(fp32: OnnxProvider, int8: OnnxProvider, stsb_texts: list[str]) -> None:
    assert int8.graph_path != fp32.graph_path
    assert int8.graph_path.stat().st_size < 0.35 * fp32.graph_path.stat().st_size
    assert int8.weight_bytes() == int8.graph_path.stat().st_size
    assert 80e6 < fp32.weight_bytes() < 100e6  # MiniLM's 22.7 M fp32 parameters
    full = fp32.embed(stsb_texts, "document").vectors
    quantized = int8.embed(stsb_texts, "document").vectors
    similarity = cosines(full, quantized)
    assert similarity.mean() >= 0.99, f"mean cosine {similarity.mean():.4f}"
    assert similarity.min() >= 0.97, f"worst cosine {similarity.min():.4f}"
    assert not np.allclose(full, quantized, atol=1e-4)  # really a different, quantized graph


def test_int8_vectors_do_not_depend_on_batch_neighbours(int8: OnnxProvider, stsb_texts: list[str]) -> None:
    """Dynamic INT8 scales activations over the whole input tensor; the provider runs texts alone so that
    the same text always gets the same vector."""
    batch = int8.embed(MIXED_TEXTS, "document").vectors
    singles = np.stack([int8.embed([text], "document").vectors[0] for text in MIXED_TEXTS])
    np.testing.assert_allclose(batch, singles, atol=1e-6)
    among_others = int8.embed(stsb_texts[:40] + MIXED_TEXTS, "document").vectors[40:]
    np.testing.assert_allclose(among_others, batch, atol=1e-6)


def test_cache_key_names_model_hash_opset_and_quantization(
    fp32: OnnxProvider, int8: OnnxProvider, minilm: Path
) -> None:
    digest = model_files_digest(minilm)
    assert fp32.graph_path.parent.name == f"all-MiniLM-L6-v2-{digest[:16]}-opset{OPSET}-e{EXPORT_RECIPE}-fp32"
    assert int8.graph_path.parent.name == f"all-MiniLM-L6-v2-{digest[:16]}-opset{OPSET}-e{EXPORT_RECIPE}-int8"
    # Atomic writes: the temporary build folders are gone.
    assert sorted(path.name for path in fp32.graph_path.parent.parent.iterdir() if path.name.startswith(".")) == []


def test_metadata_records_the_export(fp32: OnnxProvider, int8: OnnxProvider, minilm: Path) -> None:
    import onnx
    import onnxruntime
    import torch

    for provider, quantization in ((fp32, "fp32"), (int8, "int8")):
        metadata = json.loads((provider.graph_path.parent / "metadata.json").read_text())
        assert metadata["model_id"] == "all-MiniLM-L6-v2"
        assert metadata["source_path"] == str(minilm.resolve())
        assert metadata["files_sha256"] == model_files_digest(minilm)
        assert metadata["opset"] == OPSET
        assert metadata["quantization"] == quantization
        assert metadata["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
        assert metadata["torch"] == torch.__version__
        assert metadata["onnx"] == onnx.__version__
        assert metadata["onnxruntime"] == onnxruntime.__version__
        created = datetime.datetime.fromisoformat(metadata["created_at"])
        assert abs(datetime.datetime.now(datetime.UTC) - created) < datetime.timedelta(hours=1)
    assert "per-channel" in json.loads((int8.graph_path.parent / "metadata.json").read_text())["quantization_method"]

    graph = onnx.load(str(fp32.graph_path), load_external_data=False)
    assert [opset.version for opset in graph.opset_import if opset.domain in ("", "ai.onnx")] == [OPSET]
    shapes = {
        node.name: [dim.dim_param or dim.dim_value for dim in node.type.tensor_type.shape.dim]
        for node in graph.graph.input
    }
    assert shapes == {name: ["batch", "sequence"] for name in ("input_ids", "attention_mask", "token_type_ids")}
    assert [node.name for node in graph.graph.output] == ["last_hidden_state"]


def test_second_provider_reuses_the_cache_without_exporting(
    fp32: OnnxProvider, int8: OnnxProvider, minilm: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_run(*args: object) -> dict[str, object]:
        raise AssertionError("the cached graph should have been reused")

    monkeypatch.setattr(onnx_provider, "_export_graph", must_not_run)
    monkeypatch.setattr(onnx_provider, "_quantize_int8", must_not_run)
    for first in (fp32, int8):
        before = first.graph_path.stat()
        options = ProviderOptions(device="cpu", cache_dir=cache_dir, quantization=first.quantization)
        second = OnnxProvider(MINILM, minilm, options)
        after = second.graph_path.stat()
        assert second.graph_path == first.graph_path
        assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
        np.testing.assert_allclose(
            second.embed(MIXED_TEXTS, "document").vectors, first.embed(MIXED_TEXTS, "document").vectors, atol=1e-6
        )
        second.close()
        with pytest.raises(RuntimeError, match="closed"):
            second.embed(["after close"], "document")


_WITHOUT_LIBRARIES = """
import json, sys
from pathlib import Path
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # import of a blocked library raises ImportError
from akidb.embedding.provider import ProviderOptions, ProviderUnsupported
from akidb.embedding.providers.onnx import OnnxProvider
from akidb.embedding.registry import default_registry
from tests.tiny_models import minilm_path

spec, texts = default_registry().get("all-MiniLM-L6-v2"), ["hello world", "Paris in spring"]
results = {}
for cache_dir in sys.argv[2:]:
    try:
        provider = OnnxProvider(spec, minilm_path(), ProviderOptions(device="cpu", cache_dir=Path(cache_dir)))
        results[cache_dir] = {"vectors": provider.embed(texts, "document").vectors.tolist()}
    except ProviderUnsupported as exc:
        results[cache_dir] = {"error": str(exc)}
print(json.dumps(results))
"""


def _run_without(libraries: str, *cache_dirs: Path) -> dict[str, dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_LIBRARIES, libraries, *map(str, cache_dirs)],
        cwd=REPO_ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    results: dict[str, dict[str, object]] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def test_cached_graph_runs_without_torch_and_export_needs_it(
    fp32: OnnxProvider, cache_dir: Path, tmp_path: Path
) -> None:
    results = _run_without("torch,transformers", cache_dir, tmp_path / "empty")
    served = np.array(results[str(cache_dir)]["vectors"], dtype=np.float32)
    np.testing.assert_allclose(served, fp32.embed(["hello world", "Paris in spring"], "document").vectors, atol=1e-6)
    error = str(results[str(tmp_path / "empty")]["error"])
    assert "pip install 'akidb[onnx]'" in error
    assert "torch" in error
    assert not (tmp_path / "empty" / "onnx").exists() or not any((tmp_path / "empty" / "onnx").iterdir())


def test_without_onnxruntime_the_module_imports_and_the_provider_names_the_extra(cache_dir: Path) -> None:
    results = _run_without("onnxruntime", cache_dir)
    error = str(results[str(cache_dir)]["error"])
    assert "pip install 'akidb[onnx]'" in error
    assert "onnxruntime" in error


@pytest.mark.parametrize(
    ("quantization", "message"),
    [
        ("int4", "onnx: int4 is not offered; use int8, or the mlx provider for 4-bit"),
        ("fp16", "onnx: fp16 is not offered"),
    ],
)
def test_unsupported_quantization(minilm: Path, tmp_path: Path, quantization: str, message: str) -> None:
    options = ProviderOptions(device="cpu", cache_dir=tmp_path, quantization=quantization)  # type: ignore[arg-type]
    with pytest.raises(ProviderUnsupported, match=message):
        OnnxProvider(MINILM, minilm, options)
    assert not (tmp_path / "onnx").exists()  # refused before any export


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("cuda", "device 'cuda' asked for, but onnxruntime has no CUDAExecutionProvider here"),
        ("cuda:1", "pip install onnxruntime-gpu"),
        ("coreml", "no CoreMLExecutionProvider"),
        ("tpu", "unknown device 'tpu'"),
    ],
)
def test_unavailable_device(minilm: Path, tmp_path: Path, device: str, message: str) -> None:
    import onnxruntime

    if device.startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    if device == "coreml" and "CoreMLExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CoreML")
    with pytest.raises(ProviderUnsupported, match=message):
        OnnxProvider(MINILM, minilm, ProviderOptions(device=device, cache_dir=tmp_path))


@pytest.mark.parametrize(
    ("available", "device", "quantization", "expected"),
    [
        (["CUDAExecutionProvider", "CoreMLExecutionProvider", "CPUExecutionProvider"], "auto", "fp32", "CUDA"),
        (["CoreMLExecutionProvider", "CPUExecutionProvider"], "auto", "fp32", "CoreML"),
        (["CPUExecutionProvider"], "auto", "fp32", "CPU"),
        (["CUDAExecutionProvider", "CPUExecutionProvider"], "auto", "int8", "CPU"),  # integer kernels are CPU-only
        (["CUDAExecutionProvider", "CPUExecutionProvider"], "cpu", "fp32", "CPU"),
        (["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda:1", "fp32", "CUDA"),
        (["CoreMLExecutionProvider", "CPUExecutionProvider"], "mps", "fp32", "CoreML"),
    ],
)
def test_execution_provider_choice(available: list[str], device: str, quantization: str, expected: str) -> None:
    provider, options = pick_execution_provider(available, device, quantization)
    assert provider == f"{expected}ExecutionProvider"
    assert options == ({"device_id": 1} if device == "cuda:1" else {})


def test_int8_on_a_gpu_is_refused() -> None:
    with pytest.raises(ProviderUnsupported, match="int8 runs on the CPU only"):
        pick_execution_provider(["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda", "int8")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.mark.parametrize("architecture", TINY_ARCHITECTURES)
def test_tiny_architectures_match_torch(architecture: str, tiny_root: Path, cache_dir: Path) -> None:
    tiny = build_tiny_model(architecture, tiny_root)
    options = ProviderOptions(device="cpu", cache_dir=cache_dir, batch_size=4)
    ours = OnnxProvider(tiny.spec, tiny.path, options)
    reference = TorchProvider(tiny.spec, tiny.path, options)
    takes_token_types = architecture == "bert"
    metadata = json.loads((ours.graph_path.parent / "metadata.json").read_text())
    assert ("token_type_ids" in metadata["inputs"]) == takes_token_types
    for kind in ("query", "document"):
        got = ours.embed(MIXED_TEXTS, kind)
        expected = reference.embed(MIXED_TEXTS, kind)
        assert got.total_tokens == expected.total_tokens
        worst = cosines(got.vectors, expected.vectors).min()
        assert worst >= 0.9999, f"{architecture} {kind}: worst cosine {worst:.6f}"
        singles = np.stack([ours.embed([text], kind).vectors[0] for text in MIXED_TEXTS])
        assert cosines(got.vectors, singles).min() >= 0.9999
    # The prefixes are applied: a query and a document embedding of the same text differ where prefixes do.
    query, document = (ours.embed(["Paris in spring"], kind).vectors[0] for kind in ("query", "document"))
    assert (float(np.dot(query, document)) < 0.9999) == (tiny.spec.query_prefix != tiny.spec.document_prefix)


def test_dense_head_runs_after_the_graph_and_shares_its_cache(tiny_root: Path, cache_dir: Path) -> None:
    """EmbeddingGemma's shape: Dense layers after pooling. They live outside the graph, so the checkpoint
    with and without them has one cached export."""
    plain = build_tiny_model("gemma3", tiny_root)
    dense = build_tiny_model("gemma3", tiny_root, dense_head=True)
    options = ProviderOptions(device="cpu", cache_dir=cache_dir)
    plain_provider = OnnxProvider(plain.spec, plain.path, options)
    dense_provider = OnnxProvider(dense.spec, dense.path, options)
    assert dense_provider.graph_path == plain_provider.graph_path
    ours = dense_provider.embed(MIXED_TEXTS, "query").vectors
    expected = TorchProvider(dense.spec, dense.path, options).embed(MIXED_TEXTS, "query").vectors
    assert cosines(ours, expected).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    without_head = plain_provider.embed(MIXED_TEXTS, "query").vectors
    assert cosines(ours, without_head).max() < 0.99  # the head changed every vector

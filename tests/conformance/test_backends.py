"""The provider conformance suite: every backend and quantization on the packaged MiniLM, and every
backend on tiny random models of each architecture.

Bars (agreement with sentence-transformers on the first 300 STS-B dev pairs, 600 texts): fp32 min cosine
>= 0.9999 (MLX >= 0.999), INT8 / 8-bit mean >= 0.99, 4-bit mean >= 0.97.

MLX without a Metal GPU (Linux, `mlx[cpu]`) multiplies matrices at 1-3 GFLOP/s here, about 2 texts/s for
MiniLM, so there its cases use the first 25 pairs (50 texts); with Metal they use all 300. bench/quality.py
measures every backend on all 1,500 pairs.
"""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from akidb.config import EmbeddingSettings
from akidb.embedding.batching import MicroBatcher
from akidb.embedding.loader import backend_factory
from akidb.embedding.provider import EmbeddingProvider, ProviderOptions, Quantization, embed_texts
from akidb.embedding.registry import default_registry
from akidb.embedding.spec import InputKind, ModelSpec
from tests.tiny_models import TINY_ARCHITECTURES, TinyModel, build_tiny_model, dense_head_reference, minilm_path

CACHE = Path(__file__).resolve().parents[2] / ".cache" / "akidb-tests"
MINILM = default_registry().get("all-MiniLM-L6-v2")
Matrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Case:
    backend: str
    quantization: Quantization
    min_cosine: float | None = None  # every row at least this close to the reference
    mean_cosine: float | None = None  # or, for quantized weights, the mean at least this

    @property
    def id(self) -> str:
        return f"{self.backend}-{self.quantization}"

    @property
    def exact(self) -> bool:
        return self.min_cosine is not None


CASES = [
    Case("torch", "fp32", min_cosine=0.9999),
    Case("torch", "int8", mean_cosine=0.99),
    Case("onnx", "fp32", min_cosine=0.9999),
    Case("onnx", "int8", mean_cosine=0.99),
    Case("mlx", "fp32", min_cosine=0.999),
    Case("mlx", "fp16", min_cosine=0.999),
    Case("mlx", "int8", mean_cosine=0.99),
    Case("mlx", "int4", mean_cosine=0.97),
]


def build(backend: str, spec: ModelSpec, path: Path, quantization: Quantization = "fp32") -> EmbeddingProvider:
    options = ProviderOptions(device="cpu", quantization=quantization, batch_size=32, cache_dir=CACHE)
    return backend_factory(backend)(spec, path, options)


def stsb_texts(shared_data: Path, pairs: int) -> list[str]:
    with open(shared_data / "stsb-dev.tsv", newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE) if row[0] != "score"]
    return [text for _, first, second in rows[:pairs] for text in (first, second)]


def cosines(a: Matrix, b: Matrix) -> Matrix:
    result: Matrix = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return result


# --- MiniLM, every backend and quantization ---


PAIRS = 300


def mlx_on_cpu_only() -> bool:
    try:
        import mlx.core as mx
    except ImportError:
        return True
    return not mx.metal.is_available()


def pairs_for(case: Case) -> int:
    return 25 if case.backend == "mlx" and mlx_on_cpu_only() else PAIRS


@pytest.fixture(scope="module")
def all_texts(shared_data: Path) -> list[str]:
    return stsb_texts(shared_data, PAIRS)


@pytest.fixture(scope="module")
def all_reference(all_texts: list[str]) -> Matrix:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_path()), device="cpu")
    vectors: Matrix = model.encode(all_texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=True)
    return vectors


@pytest.fixture(scope="module")
def texts(case_provider: tuple[Case, EmbeddingProvider], all_texts: list[str]) -> list[str]:
    return all_texts[: 2 * pairs_for(case_provider[0])]


@pytest.fixture(scope="module")
def reference(case_provider: tuple[Case, EmbeddingProvider], all_reference: Matrix) -> Matrix:
    return all_reference[: 2 * pairs_for(case_provider[0])]


@pytest.fixture(scope="module", params=CASES, ids=[case.id for case in CASES])
def case_provider(request: pytest.FixtureRequest) -> Iterator[tuple[Case, EmbeddingProvider]]:
    case: Case = request.param
    provider = build(case.backend, MINILM, minilm_path(), case.quantization)
    yield case, provider
    provider.close()


@pytest.fixture(scope="module")
def embedded(case_provider: tuple[Case, EmbeddingProvider], texts: list[str]) -> Matrix:
    return embed_texts(case_provider[1], texts, "document").vectors


def test_shape_dtype_and_unit_norm(case_provider: tuple[Case, EmbeddingProvider], embedded: Matrix) -> None:
    case, provider = case_provider
    assert provider.name == case.backend
    assert embedded.shape == (2 * pairs_for(case), 384)
    assert embedded.dtype == np.float32
    assert np.isfinite(embedded).all()
    np.testing.assert_allclose(np.linalg.norm(embedded, axis=1), 1.0, atol=1e-4)


def test_agrees_with_sentence_transformers(
    case_provider: tuple[Case, EmbeddingProvider], embedded: Matrix, reference: Matrix
) -> None:
    case, _ = case_provider
    agreement = cosines(embedded, reference)
    if case.min_cosine is not None:
        assert agreement.min() >= case.min_cosine, f"{case.id}: worst cosine {agreement.min():.6f}"
    if case.mean_cosine is not None:
        assert agreement.mean() >= case.mean_cosine, f"{case.id}: mean cosine {agreement.mean():.6f}"
        assert agreement.min() >= case.mean_cosine - 0.1, f"{case.id}: worst cosine {agreement.min():.6f}"


def test_deterministic(case_provider: tuple[Case, EmbeddingProvider], texts: list[str]) -> None:
    first = embed_texts(case_provider[1], texts[:64], "document").vectors
    again = embed_texts(case_provider[1], texts[:64], "document").vectors
    np.testing.assert_allclose(again, first, atol=1e-6)


def test_a_batch_equals_the_same_texts_one_by_one(
    case_provider: tuple[Case, EmbeddingProvider], embedded: Matrix, texts: list[str]
) -> None:
    """Padding and batch neighbours must not change a text's vector. Dynamic quantization scales the
    activations per batch, so a quantized vector moves with its neighbours by about its quantization
    error: there the bar is the quantized one less 0.02."""
    case, provider = case_provider
    picks = [i for i in (0, 7, 33, 49, 101, 333, 598) if i < len(texts)]  # different lengths: the batch pads
    singles = np.stack([embed_texts(provider, [texts[i]], "document").vectors[0] for i in picks])
    agreement = cosines(singles, embedded[picks])
    bar = case.min_cosine if case.min_cosine is not None else (case.mean_cosine or 0.0) - 0.02
    assert agreement.min() >= bar, f"{case.id}: batch vs single cosine {agreement.min():.6f}"


def test_total_tokens_counts_the_window(case_provider: tuple[Case, EmbeddingProvider]) -> None:
    result = embed_texts(case_provider[1], ["hello world", "word " * 1000], "document")
    # [CLS] hello world [SEP] = 4 tokens; the long text is cut at the model's 256-token window.
    assert result.total_tokens == 4 + 256
    # The micro-batcher shapes batches from these token ids: the same ones embed_texts runs.
    tokenized = case_provider[1].tokenize(["hello world", "word " * 1000], "document")
    assert [len(row.ids) for row in tokenized] == [4, 256]


def test_the_micro_batcher_gives_what_embed_texts_gives(
    case_provider: tuple[Case, EmbeddingProvider], embedded: Matrix, texts: list[str]
) -> None:
    """The serving path (texts tokenized once on the batcher's worker, batches cut by the queue, padded
    token ids to embed_batch) against embed_texts, for concurrent requests of 1 to 3 texts."""
    case, provider = case_provider
    batcher = MicroBatcher(provider, EmbeddingSettings(batch_timeout_ms=2.0, batch_size=32))
    starts = range(0, min(72, len(texts) - 3), 3)
    requests = [texts[i : i + 1 + i % 3] for i in starts]

    async def scenario() -> list[Matrix]:
        results = await asyncio.gather(*(batcher.embed(r, "document", "interactive") for r in requests))
        return [result.vectors for result in results]

    try:
        served = np.concatenate(asyncio.run(scenario()))
    finally:
        batcher.close(wait=True)
    rows = [i + j for i in starts for j in range(1 + i % 3)]
    agreement = cosines(served, embedded[rows])
    bar = case.min_cosine if case.min_cosine is not None else (case.mean_cosine or 0.0) - 0.02
    assert agreement.min() >= bar, f"{case.id}: batcher vs embed_texts cosine {agreement.min():.6f}"


# --- tiny random models of each architecture, every backend that runs them ---


TINY_BACKENDS = ("torch", "onnx", "mlx")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyModel]:
    root = tmp_path_factory.mktemp("tiny")
    # The Gemma3 one ends in two Dense layers, as EmbeddingGemma does.
    return {name: build_tiny_model(name, root, dense_head=name == "gemma3") for name in TINY_ARCHITECTURES}


def hand_pooled(tiny: TinyModel, texts: list[str], kind: InputKind) -> Matrix:
    """transformers' own forward on each text alone, pooled by hand per the spec: the reference."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModel

    tokenizer = Tokenizer.from_file(str(tiny.path / "tokenizer.json"))
    tokenizer.no_padding()
    model = AutoModel.from_pretrained(str(tiny.path)).eval()
    rows = []
    for text in texts:
        ids = tokenizer.encode(tiny.spec.prefix_for(kind) + text).ids
        with torch.inference_mode():
            hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        pooled = {"cls": hidden[0], "last_token": hidden[-1], "mean": hidden.mean(dim=0)}[tiny.spec.pooling]
        pooled = dense_head_reference(tiny, pooled[None, :])[0]  # type: ignore[index]
        rows.append((pooled / pooled.norm()).numpy())
    return np.stack(rows).astype(np.float32)


TINY_TEXTS = [
    "one",
    "a somewhat longer sentence, so that the batch has padding in it",
    "three little words",
    "the quick brown fox jumps over the lazy dog again and again and again",
]


@pytest.mark.parametrize("backend", TINY_BACKENDS)
@pytest.mark.parametrize("architecture", TINY_ARCHITECTURES)
def test_tiny_models_agree_with_transformers_and_apply_the_spec(
    tiny_models: dict[str, TinyModel], architecture: str, backend: str
) -> None:
    tiny = tiny_models[architecture]
    provider = build(backend, tiny.spec, tiny.path)
    try:
        for kind in ("query", "document"):
            ours = embed_texts(provider, TINY_TEXTS, kind).vectors  # one padded batch
            expected = hand_pooled(tiny, TINY_TEXTS, kind)
            agreement = cosines(ours, expected)
            assert agreement.min() >= 0.999, f"{architecture}/{backend}/{kind}: {agreement.min():.6f}"
        if tiny.spec.query_prefix != tiny.spec.document_prefix:
            query = embed_texts(provider, TINY_TEXTS[:1], "query").vectors
            document = embed_texts(provider, TINY_TEXTS[:1], "document").vectors
            assert cosines(query, document)[0] < 0.999, "the query prefix changed nothing"
    finally:
        provider.close()


@pytest.mark.parametrize("architecture", TINY_ARCHITECTURES)
def test_tiny_models_give_the_same_vectors_on_every_backend(
    tiny_models: dict[str, TinyModel], architecture: str
) -> None:
    tiny = tiny_models[architecture]
    vectors = {}
    for backend in TINY_BACKENDS:
        provider = build(backend, tiny.spec, tiny.path)
        vectors[backend] = embed_texts(provider, TINY_TEXTS, "query").vectors
        provider.close()
    for backend in ("onnx", "mlx"):
        agreement = cosines(vectors[backend], vectors["torch"])
        assert agreement.min() >= 0.999, f"{architecture}: {backend} vs torch {agreement.min():.6f}"

"""The one Protocol every embedding backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from akidb.embedding.spec import InputKind, ModelSpec
from akidb.embedding.tokens import PaddedBatch, TokenizedText, length_sorted_chunks, pad_batch
from akidb.errors import ModelUnavailable

Vectors = npt.NDArray[np.float32]
Quantization = Literal["fp32", "fp16", "int8", "int4"]


class ProviderUnsupported(ModelUnavailable):
    """This backend cannot serve this model here (missing library, no such device, unsupported
    quantization). The router may fall back to the next backend in its order."""


def missing_extra(backend: str, extra: str, exc: ImportError) -> ProviderUnsupported:
    return ProviderUnsupported(f"the {backend} provider needs pip install 'akidb[{extra}]' ({exc})")


@dataclass(frozen=True, slots=True)
class ProviderOptions:
    """What every backend's constructor takes besides the spec and the model folder."""

    device: str = "auto"  # auto | cpu | cuda | mps | coreml ...
    quantization: Quantization = "fp32"
    num_threads: int = 0  # 0: the library's default (all cores)
    batch_size: int = 32
    # Generated artefacts (exported ONNX graphs, quantized weights) live under here.
    cache_dir: Path = Path(".cache/akidb")


@dataclass(frozen=True, slots=True)
class Embeddings:
    vectors: Vectors  # shape (n, dimension), float32
    total_tokens: int


@runtime_checkable
class EmbeddingProvider(Protocol):
    """Turns token ids into float32 vectors. Calls block; callers run them off the event loop.

    The micro-batcher tokenizes each text once (`tokenize`), shapes batches from the token ids alone and
    hands the provider one right-padded batch per forward pass (`embed_batch`); providers never re-tokenize,
    re-sort or re-cut (as Text Embeddings Inference's queue and backends)."""

    @property
    def spec(self) -> ModelSpec: ...

    @property
    def name(self) -> str:
        """Backend name for logs and metrics: torch, onnx, mlx, mock."""
        ...

    @property
    def pad_id(self) -> int:
        """The token id `pad_batch` fills short rows with."""
        ...

    @property
    def rows_per_pass(self) -> int | None:
        """The most rows one forward pass may hold, None for any. Dynamic INT8 says 1: its activation scale
        spans the whole batch, so only a text run alone always gets the same vector."""
        ...

    def tokenize(self, texts: Sequence[str], kind: InputKind) -> Sequence[TokenizedText]:
        """Each text as the model reads it: the spec's prefix for `kind` applied, cut at the model's window."""
        ...

    def embed_batch(self, batch: PaddedBatch) -> Vectors:
        """One forward pass over a padded batch, pooled (and through any output head): shape (rows, dimension)."""
        ...

    def warmup(self) -> None:
        """Run one real inference so the first request pays no start-up cost."""
        ...

    def close(self) -> None: ...


def embed_texts(provider: EmbeddingProvider, texts: Sequence[str], kind: InputKind, batch_size: int = 32) -> Embeddings:
    """Embed texts outside the micro-batcher (warm-up, benchmarks, tests): tokenize once, run length-sorted
    padded batches of at most `batch_size`, restore the order."""
    tokenized = provider.tokenize(texts, kind)
    vectors = np.empty((len(texts), provider.spec.dimension), dtype=np.float32)
    batch_size = min(batch_size, provider.rows_per_pass or batch_size)
    for rows in length_sorted_chunks([len(row.ids) for row in tokenized], batch_size):
        vectors[rows] = provider.embed_batch(pad_batch([tokenized[row] for row in rows], provider.pad_id))
    return Embeddings(vectors=vectors, total_tokens=sum(len(row.ids) for row in tokenized))


class ProviderFactory(Protocol):
    """A backend's constructor: `TorchProvider`, `OnnxProvider`, `MlxProvider` all have this shape."""

    def __call__(self, spec: ModelSpec, model_path: Path, options: ProviderOptions) -> EmbeddingProvider: ...

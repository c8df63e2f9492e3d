"""The one Protocol every embedding backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from akidb.embedding.spec import InputKind, ModelSpec
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
    """Turns texts into float32 vectors. Calls block; callers run them off the event loop."""

    @property
    def spec(self) -> ModelSpec: ...

    @property
    def name(self) -> str:
        """Backend name for logs and metrics: torch, onnx, mlx, mock."""
        ...

    def embed(self, texts: Sequence[str], kind: InputKind) -> Embeddings:
        """Embed texts as queries or documents; the spec's prefix for that kind is applied here."""
        ...

    def count_tokens(self, texts: Sequence[str], kind: InputKind) -> list[int]:
        """Each text's token count as `embed` would see it (prefix and truncation included), without
        running the model: the micro-batcher sizes its batches by these."""
        ...

    def warmup(self) -> None:
        """Run one real inference so the first request pays no start-up cost."""
        ...

    def close(self) -> None: ...


class ProviderFactory(Protocol):
    """A backend's constructor: `TorchProvider`, `OnnxProvider`, `MlxProvider` all have this shape."""

    def __call__(self, spec: ModelSpec, model_path: Path, options: ProviderOptions) -> EmbeddingProvider: ...

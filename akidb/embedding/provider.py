"""The one Protocol every embedding backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from akidb.embedding.spec import InputKind, ModelSpec

Vectors = npt.NDArray[np.float32]


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

    def warmup(self) -> None:
        """Run one real inference so the first request pays no start-up cost."""
        ...

    def close(self) -> None: ...

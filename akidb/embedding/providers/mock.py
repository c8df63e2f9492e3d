"""Deterministic hash-based unit vectors: same text, same vector, any dimension. For tests."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from akidb.embedding.provider import Embeddings
from akidb.embedding.spec import InputKind, ModelSpec
from akidb.vectors import l2_normalize


def mock_vector(text: str, dimension: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dimension).astype(np.float32)
    return l2_normalize(vector)


class MockProvider:
    def __init__(self, spec: ModelSpec) -> None:
        self._spec = spec

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    @property
    def name(self) -> str:
        return "mock"

    def embed(self, texts: Sequence[str], kind: InputKind) -> Embeddings:
        prefix = self._spec.prefix_for(kind)
        dimension = self._spec.dimension
        vectors = np.empty((len(texts), dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            vectors[row] = mock_vector(prefix + text, dimension)
        return Embeddings(vectors=vectors, total_tokens=sum(len(t.split()) for t in texts))

    def count_tokens(self, texts: Sequence[str], kind: InputKind) -> list[int]:
        return [len(text.split()) for text in texts]

    def warmup(self) -> None:
        self.embed(["warm-up"], "document")

    def close(self) -> None:
        pass

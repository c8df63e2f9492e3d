"""Deterministic hash-based unit vectors: same text, same vector, any dimension. For tests.

Its "tokens" are one per word (at least one), every one the handle of the whole prefixed text in a bounded
table, so `embed_batch` can hash exactly the text it was given while the micro-batcher sees real token ids.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from akidb.embedding.provider import Embeddings, Vectors, embed_texts
from akidb.embedding.spec import InputKind, ModelSpec
from akidb.embedding.tokens import PaddedBatch
from akidb.vectors import l2_normalize

# Texts tokenized but not yet embedded that the mock remembers (oldest forgotten first).
_TABLE_SIZE = 1 << 16
PAD_ID = 0


def mock_vector(text: str, dimension: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dimension).astype(np.float32)
    return l2_normalize(vector)


@dataclass(frozen=True, slots=True)
class MockTokens:
    ids: list[int]
    type_ids: list[int]


class MockProvider:
    def __init__(self, spec: ModelSpec) -> None:
        self._spec = spec
        self._texts: OrderedDict[int, tuple[str, InputKind]] = OrderedDict()
        self._next_handle = PAD_ID + 1
        self._lock = threading.Lock()

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    @property
    def name(self) -> str:
        return "mock"

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def rows_per_pass(self) -> int | None:
        return None

    def tokenize(self, texts: Sequence[str], kind: InputKind) -> list[MockTokens]:
        tokenized: list[MockTokens] = []
        with self._lock:
            for text in texts:
                handle = self._next_handle
                self._next_handle += 1
                self._texts[handle] = (text, kind)
                count = max(1, len(text.split()))
                tokenized.append(MockTokens([handle] * count, [0] * count))
            while len(self._texts) > _TABLE_SIZE:
                self._texts.popitem(last=False)
        return tokenized

    def texts_of(self, batch: PaddedBatch) -> list[tuple[str, InputKind]]:
        """The (text, kind) behind each row of a batch."""
        with self._lock:
            return [self._texts[int(handle)] for handle in batch.input_ids[:, 0]]

    def embed_batch(self, batch: PaddedBatch) -> Vectors:
        rows = self.texts_of(batch)
        with self._lock:
            for handle in batch.input_ids[:, 0]:
                self._texts.pop(int(handle), None)
        dimension = self._spec.dimension
        vectors = np.empty((len(rows), dimension), dtype=np.float32)
        for row, (text, kind) in enumerate(rows):
            vectors[row] = mock_vector(self._spec.prefix_for(kind) + text, dimension)
        return vectors

    def embed(self, texts: Sequence[str], kind: InputKind) -> Embeddings:
        return embed_texts(self, texts, kind)

    def warmup(self) -> None:
        self.embed(["warm-up"], "document")

    def close(self) -> None:
        pass

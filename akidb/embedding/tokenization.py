"""Tokenization shared by the torch, onnx and mlx backends: the fast tokenizer and the spec's prefixes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from akidb.embedding.provider import Embeddings, embed_texts
from akidb.embedding.spec import InputKind, ModelSpec
from akidb.embedding.tokens import PaddedBatch, TokenizedText

FloatArray = npt.NDArray[np.float32]


def load_tokenizer(model_path: Path, max_length: int) -> tuple[Tokenizer, int]:
    """The fast tokenizer, truncating at the model's window and never padding, plus its pad id.

    Some exported tokenizer.json files pin padding and truncation (all-MiniLM-L6-v2's pads everything
    to 128 and truncates at 128 while the model reads 256); sentence-transformers overrides both, so do we.
    Batches are padded to their own longest row by `tokens.pad_batch`.
    """
    tokenizer = Tokenizer.from_file(str(model_path / "tokenizer.json"))
    pad_id = int(tokenizer.padding["pad_id"]) if tokenizer.padding else 0
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer, pad_id


class TokenizedModel:
    """What the torch, onnx and mlx providers share: the fast tokenizer, the spec's prefixes and the output
    head. A provider sets these attributes and implements `_run_batch`, which returns the pooled,
    unnormalised states of one padded batch."""

    _spec: ModelSpec
    _tokenizer: Tokenizer
    _pad_id: int
    _head: Callable[[FloatArray], FloatArray]
    batch_size: int

    def _run_batch(self, batch: PaddedBatch) -> FloatArray:
        raise NotImplementedError

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def rows_per_pass(self) -> int | None:
        return None

    def tokenize(self, texts: Sequence[str], kind: InputKind) -> Sequence[TokenizedText]:
        prefix = self._spec.prefix_for(kind)
        encodings: Sequence[TokenizedText] = self._tokenizer.encode_batch([prefix + text for text in texts])
        return encodings

    def embed_batch(self, batch: PaddedBatch) -> FloatArray:
        """One forward pass; the head turns the pooled states into the model's embeddings (its Dense
        layers, then normalisation)."""
        return self._head(self._run_batch(batch))

    def embed(self, texts: Sequence[str], kind: InputKind) -> Embeddings:
        """For callers outside the micro-batcher (benchmarks, tests): `provider.embed_texts`."""
        return embed_texts(self, texts, kind, self.batch_size)  # type: ignore[arg-type]

    def warmup(self) -> None:
        self.embed(["warm-up"], "document")

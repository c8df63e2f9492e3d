"""Tokenization shared by every backend: the fast tokenizer, length-sorted chunks, right padding."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from akidb.embedding.provider import Embeddings
from akidb.embedding.spec import InputKind, ModelSpec

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


def load_tokenizer(model_path: Path, max_length: int) -> tuple[Tokenizer, int]:
    """The fast tokenizer, truncating at the model's window and never padding, plus its pad id.

    Some exported tokenizer.json files pin padding and truncation (all-MiniLM-L6-v2's pads everything
    to 128 and truncates at 128 while the model reads 256); sentence-transformers overrides both, so do we.
    Batches are padded to their own longest row by `pad_batch`.
    """
    tokenizer = Tokenizer.from_file(str(model_path / "tokenizer.json"))
    pad_id = int(tokenizer.padding["pad_id"]) if tokenizer.padding else 0
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer, pad_id


# What one more batch costs, in padded tokens. Measured with MiniLM on this kind of 2-core CPU (ONNX
# Runtime fp32): a batch takes about 3.5 ms plus 0.2 ms per padded token (rows x longest row), so the
# fixed cost equals about 16 tokens. Sixteen random fortunes run as one padded batch did 41 texts/s;
# split into batches of similar length, 95.
BATCH_OVERHEAD_TOKENS = 16


def length_sorted_chunks(
    lengths: Sequence[int], batch_size: int, overhead_tokens: int = BATCH_OVERHEAD_TOKENS
) -> list[list[int]]:
    """Row indices grouped into batches of similar length, at most `batch_size` rows each.

    Rows are sorted by length and then cut where they cost least in all: each batch costs
    `overhead_tokens` plus its rows x its longest row (dynamic programming over the sorted rows), so
    texts of very different lengths never share a batch just because they arrived together."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    sorted_lengths = [lengths[row] for row in order]
    best = [0] * (len(order) + 1)  # best[end]: the least cost of rows [0, end)
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        longest = sorted_lengths[end - 1]
        best[end], cut[end] = min(
            (best[start] + overhead_tokens + (end - start) * longest, start)
            for start in range(max(0, end - batch_size), end)
        )
    chunks: list[list[int]] = []
    end = len(order)
    while end > 0:
        chunks.append(order[cut[end] : end])
        end = cut[end]
    return chunks[::-1]


@dataclass(frozen=True, slots=True)
class PaddedBatch:
    """Right-padded token arrays, shape (rows, longest row). Right padding keeps every real token's
    position, so causal models give the same hidden states as unpadded."""

    input_ids: IntArray
    attention_mask: IntArray
    token_type_ids: IntArray

    @property
    def lengths(self) -> IntArray:
        lengths: IntArray = self.attention_mask.sum(axis=1)
        return lengths


def pad_batch(encodings: Sequence[Any], pad_id: int) -> PaddedBatch:
    width = max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    types = np.zeros((len(encodings), width), dtype=np.int64)
    for row, encoding in enumerate(encodings):
        n = len(encoding.ids)
        ids[row, :n] = encoding.ids
        mask[row, :n] = 1
        types[row, :n] = encoding.type_ids
    return PaddedBatch(ids, mask, types)


def token_counts(tokenizer: Tokenizer, texts: Sequence[str], prefix: str) -> list[int]:
    return [len(encoding.ids) for encoding in tokenizer.encode_batch([prefix + text for text in texts])]


def embed_in_chunks(
    tokenizer: Tokenizer,
    pad_id: int,
    texts: Sequence[str],
    prefix: str,
    batch_size: int,
    dimension: int,
    run_batch: Callable[[PaddedBatch], FloatArray],
    *,
    head: Callable[[FloatArray], FloatArray] | None = None,
) -> Embeddings:
    """Tokenize all texts at once, run length-sorted padded chunks through `run_batch`, restore order.

    With a `head` (heads.OutputHead), `run_batch` returns pooled states and the head turns them into
    the model's embeddings (its Dense layers, then normalisation)."""
    encodings = tokenizer.encode_batch([prefix + text for text in texts])
    vectors = np.empty((len(texts), dimension), dtype=np.float32)
    total_tokens = 0
    for rows in length_sorted_chunks([len(e.ids) for e in encodings], batch_size):
        chunk = [encodings[row] for row in rows]
        pooled = run_batch(pad_batch(chunk, pad_id))
        vectors[rows] = head(pooled) if head is not None else pooled
        total_tokens += sum(len(e.ids) for e in chunk)
    return Embeddings(vectors=vectors, total_tokens=total_tokens)


class TokenizedModel:
    """What the torch, onnx and mlx providers share: the fast tokenizer, the spec's prefixes, chunking and
    the output head. A provider sets these attributes and implements `_run_batch`, which returns the
    pooled, unnormalised states of one padded batch."""

    _spec: ModelSpec
    _tokenizer: Tokenizer
    _pad_id: int
    _head: Callable[[FloatArray], FloatArray]
    batch_size: int

    def _run_batch(self, batch: PaddedBatch) -> FloatArray:
        raise NotImplementedError

    def count_tokens(self, texts: Sequence[str], kind: InputKind) -> list[int]:
        return token_counts(self._tokenizer, texts, self._spec.prefix_for(kind))

    def embed(self, texts: Sequence[str], kind: InputKind) -> Embeddings:
        return embed_in_chunks(
            self._tokenizer,
            self._pad_id,
            texts,
            self._spec.prefix_for(kind),
            self.batch_size,
            self._spec.dimension,
            self._run_batch,
            head=self._head,
        )

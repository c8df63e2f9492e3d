"""Pooling and normalisation in numpy, for backends whose graphs return token states."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from akidb.embedding.spec import Pooling
from akidb.vectors import l2_normalize

FloatArray = npt.NDArray[np.float32]


def pool(hidden: npt.NDArray[np.floating], attention_mask: npt.NDArray[np.integer], pooling: Pooling) -> FloatArray:
    """hidden: (rows, tokens, dim); attention_mask: (rows, tokens), right-padded."""
    hidden = hidden.astype(np.float32, copy=False)
    if pooling == "cls":
        return np.ascontiguousarray(hidden[:, 0])
    if pooling == "last_token":
        last = attention_mask.sum(axis=1) - 1
        return np.ascontiguousarray(hidden[np.arange(hidden.shape[0]), last])
    mask = attention_mask[:, :, None].astype(np.float32)
    summed = (hidden * mask).sum(axis=1)
    counts = np.maximum(mask.sum(axis=1), 1e-9)
    mean: FloatArray = (summed / counts).astype(np.float32)
    return mean


def fit_dimension(vectors: FloatArray, dimension: int, normalize: bool) -> FloatArray:
    """Cut Matryoshka embeddings to a smaller trained size (and re-normalise them)."""
    if vectors.shape[1] == dimension:
        return vectors
    cut = np.ascontiguousarray(vectors[:, :dimension])
    return l2_normalize(cut) if normalize else cut

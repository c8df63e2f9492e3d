"""Exact answers to check the index against."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def brute_distances(
    metric: str, query: npt.NDArray[np.float32], matrix: npt.NDArray[np.float32]
) -> npt.NDArray[np.float64]:
    """The metric's distance from query to each row, as the API defines it (cosine 1-cos, ip 1-dot, l2 squared)."""
    q = np.asarray(query, dtype=np.float64)
    m = np.asarray(matrix, dtype=np.float64).reshape(-1, q.shape[0])
    if metric == "l2":
        return np.asarray(((m - q) ** 2).sum(axis=1))
    if metric == "ip":
        return np.asarray(1.0 - m @ q)
    return np.asarray(1.0 - (m @ q) / (np.linalg.norm(m, axis=1) * np.linalg.norm(q)))

"""Vector helpers shared by the embedding backends and the storage indexes."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# Below this norm a vector is left as it is (a zero vector stays zero). hnswlib's cosine space uses the
# same guard when it normalises, so the exact scan and the graph agree on every stored vector.
NORM_FLOOR = 1e-30


def l2_normalize(vectors: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Each vector (along the last axis) scaled to unit length, as float32."""
    data = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(data, axis=-1, keepdims=True)
    normalized: npt.NDArray[np.float32] = (data / np.maximum(norms, NORM_FLOOR)).astype(np.float32, copy=False)
    return normalized

"""What a sentence-transformers model does after pooling: its Dense layers (EmbeddingGemma has two),
then normalisation. Read from modules.json, applied in numpy so every backend shares one implementation."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from akidb.embedding.spec import ModelSpec
from akidb.errors import ModelUnavailable
from akidb.vectors import l2_normalize

from .pooling import FloatArray

log = logging.getLogger(__name__)

_DENSE = "sentence_transformers.models.Dense"


def _identity(values: FloatArray) -> FloatArray:
    return values


def _tanh(values: FloatArray) -> FloatArray:
    result: FloatArray = np.tanh(values)
    return result


_ACTIVATIONS: dict[str, Callable[[FloatArray], FloatArray]] = {
    "torch.nn.modules.linear.Identity": _identity,
    "torch.nn.modules.activation.Tanh": _tanh,
}


@dataclass(frozen=True)
class DenseLayer:
    weight: FloatArray  # (out_features, in_features), as torch stores it
    bias: FloatArray | None
    activation: str

    def __call__(self, vectors: FloatArray) -> FloatArray:
        out: FloatArray = vectors @ self.weight.T
        if self.bias is not None:
            out += self.bias
        result: FloatArray = _ACTIVATIONS[self.activation](out).astype(np.float32, copy=False)
        return result


@dataclass(frozen=True)
class OutputHead:
    """Pooled token states in, the model's embeddings out."""

    dense: tuple[DenseLayer, ...] = field(default_factory=tuple)
    normalize: bool = True

    @property
    def output_dimension(self) -> int | None:
        return int(self.dense[-1].weight.shape[0]) if self.dense else None

    def __call__(self, pooled: FloatArray) -> FloatArray:
        vectors = pooled.astype(np.float32, copy=False)
        for layer in self.dense:
            vectors = layer(vectors)
        return l2_normalize(vectors) if self.normalize else vectors


def _load_dense(folder: Path) -> DenseLayer:
    config = json.loads((folder / "config.json").read_text())
    activation = str(config.get("activation_function", "torch.nn.modules.linear.Identity"))
    if activation not in _ACTIVATIONS:
        raise ModelUnavailable(f"{folder}: Dense activation {activation} is not supported")
    weights_file = folder / "model.safetensors"
    if not weights_file.is_file():
        raise ModelUnavailable(f"{folder}: the Dense layer's weights must be in model.safetensors")
    from safetensors.numpy import load_file

    tensors = load_file(str(weights_file))
    weight = tensors["linear.weight"].astype(np.float32)
    bias = tensors.get("linear.bias")
    return DenseLayer(weight, None if bias is None else bias.astype(np.float32), activation)


def load_output_head(model_path: Path, spec: ModelSpec) -> OutputHead:
    """The Dense layers that modules.json lists after pooling (none for most models)."""
    modules_file = model_path / "modules.json"
    dense: list[DenseLayer] = []
    if modules_file.is_file():
        for module in json.loads(modules_file.read_text()):
            if module.get("type") == _DENSE:
                dense.append(_load_dense(model_path / module["path"]))
    head = OutputHead(tuple(dense), spec.normalize)
    if head.output_dimension is not None:
        log.info("%s: %d Dense layer(s) after pooling, %d dimensions out", spec.id, len(dense), head.output_dimension)
        if head.output_dimension != spec.dimension:
            raise ModelUnavailable(
                f"model '{spec.id}': its Dense layers give {head.output_dimension} dimensions, "
                f"the registry says {spec.dimension}"
            )
    return head

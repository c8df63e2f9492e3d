"""ModelSpec: everything the gateway needs to know about a model, as data."""

from __future__ import annotations

from typing import Literal

import msgspec

Pooling = Literal["mean", "cls", "last_token"]
InputKind = Literal["query", "document"]


class ModelSpec(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    hf_path: str
    dimension: int
    max_seq_length: int
    pooling: Pooling = "mean"
    normalize: bool = True
    query_prefix: str = ""
    document_prefix: str = ""
    # Smaller output sizes the model was trained for (Matryoshka); empty if none.
    matryoshka_dimensions: tuple[int, ...] = ()
    parameters_m: float = 0.0
    size_mb: float = 0.0
    languages: tuple[str, ...] = ("en",)
    use_cases: tuple[str, ...] = ()
    default_quantization: str = "fp32"
    description: str = ""
    # Importable package that ships the model files in its `model/` folder, if any.
    packaged_module: str | None = None
    # A local folder the user registered for this model; searched first.
    local_path: str | None = None
    # Backends that can serve it (an MLX-quantized checkpoint needs mlx); empty means any.
    providers: tuple[str, ...] = ()

    def prefix_for(self, kind: InputKind) -> str:
        return self.query_prefix if kind == "query" else self.document_prefix

    def supports_dimension(self, dimension: int) -> bool:
        return dimension == self.dimension or dimension in self.matryoshka_dimensions

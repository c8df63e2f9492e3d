"""The mlx backend: Hugging Face safetensors run by Apple's MLX (Metal GPU on Apple silicon, else the CPU).

Architectures by config.json's model_type: BERT encoders (our own code in mlx_models), Qwen3 and Gemma3
text decoders (mlx-lm's blocks). Quantization: fp32, fp16 (weights and compute), or MLX's own affine
int8/int4 of the Linear layers and the token embeddings (see mlx_models.quantize; int4 keeps the
attention's value and output projections at 8 bits). Folders already quantized in MLX format
(mlx-community's conversions, or `save_quantized`) load as they are.

mlx is imported lazily: importing this module works without the `mlx` extra.
"""

from __future__ import annotations

import importlib
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from akidb.embedding.heads import OutputHead, load_output_head
from akidb.embedding.provider import ProviderOptions, ProviderUnsupported, missing_extra
from akidb.embedding.sources import max_seq_length_of
from akidb.embedding.spec import ModelSpec
from akidb.embedding.tokenization import FloatArray, TokenizedModel, load_tokenizer
from akidb.embedding.tokens import PaddedBatch
from akidb.errors import ModelUnavailable

log = logging.getLogger(__name__)

_BITS = {"int8": 8, "int4": 4}
_GPU_NAMES = {"gpu", "mps", "metal"}
# MLX keeps global state (streams, the compile cache) and every provider shares its one device, so all
# mlx providers run one inference at a time between them.
_MLX_LOCK = threading.Lock()


def _import_mlx() -> tuple[Any, Any]:
    """mlx.core and our model module, or `missing_extra` without mlx. (mlx-lm, which the Qwen3 and Gemma3
    models need, is imported when one of them loads, with the same error.)"""
    try:
        mx = importlib.import_module("mlx.core")
        models = importlib.import_module("akidb.embedding.providers.mlx_models")
    except ImportError as exc:
        raise missing_extra("mlx", "mlx", exc) from exc
    return mx, models


def pick_mlx_device(mx: Any, device: str) -> tuple[Any, str]:
    """auto: MLX's default device (the Metal GPU where there is one). gpu, mps and metal all name the
    Metal GPU; MLX has no CUDA path here."""
    if device == "auto":
        on_gpu = mx.default_device().type == mx.gpu
        return (mx.gpu, "gpu") if on_gpu else (mx.cpu, "cpu")
    if device == "cpu":
        return mx.cpu, "cpu"
    if device in _GPU_NAMES:
        if not mx.metal.is_available():
            raise ProviderUnsupported(f"mlx: device '{device}' asked for, but MLX has no Metal GPU here")
        return mx.gpu, "gpu"
    if device.startswith("cuda"):
        raise ProviderUnsupported(f"mlx: device '{device}' is not offered; MLX runs on Apple GPUs or the CPU")
    raise ProviderUnsupported(f"mlx: unknown device '{device}' (auto, cpu or gpu)")


class MlxProvider(TokenizedModel):
    def __init__(self, spec: ModelSpec, model_path: Path, options: ProviderOptions) -> None:
        mx, models = _import_mlx()
        self._mx = mx
        self._spec = spec
        self.batch_size = options.batch_size
        self._device, self.device = pick_mlx_device(mx, options.device)
        if options.quantization not in {"fp32", "fp16", *_BITS}:
            raise ProviderUnsupported(f"mlx: unknown quantization '{options.quantization}' (fp32, fp16, int8, int4)")
        self.max_length = max_seq_length_of(model_path, spec)
        self._tokenizer, self._pad_id = load_tokenizer(model_path, self.max_length)
        dtype = mx.float16 if options.quantization == "fp16" else mx.float32
        try:
            with mx.stream(self._device):
                loaded = models.load_model(model_path, dtype)
                if loaded.prequantized_bits is not None:
                    self.quantization = f"int{loaded.prequantized_bits}"
                    if options.quantization != self.quantization:
                        log.info("mlx: %s is stored as %s; serving it so", model_path, self.quantization)
                elif options.quantization in _BITS:
                    models.quantize(loaded.module, _BITS[options.quantization])
                    mx.eval(loaded.module.parameters())
                    self.quantization = options.quantization
                else:
                    self.quantization = options.quantization
        except models.UnsupportedCheckpoint as exc:
            raise ProviderUnsupported(f"mlx: {exc}") from exc
        except ImportError as exc:  # mlx-lm, for the decoder architectures
            raise missing_extra("mlx", "mlx", exc) from exc
        except (ValueError, KeyError) as exc:  # weights that do not fit the architecture
            raise ProviderUnsupported(f"mlx: cannot load {model_path}: {exc}") from exc
        self._model: Any = loaded.module
        self._dense_activations = loaded.dense_activations
        if loaded.dense_activations:  # Dense layers stored in the MLX weights run in MLX; the head normalises
            self._head = OutputHead((), spec.normalize)
            out = loaded.module.dense[-1].weight.shape[0]
            if out != spec.dimension:
                raise ModelUnavailable(
                    f"model '{spec.id}': its Dense layers give {out} dimensions, not {spec.dimension}"
                )
        else:
            self._head = load_output_head(model_path, spec)
        self._weight_bytes = int(models.weight_bytes(loaded.module))
        self._lock = _MLX_LOCK
        if options.num_threads > 0:
            log.info("mlx: num_threads is not configurable in MLX; ignoring %d", options.num_threads)
        log.info(
            "mlx provider: %s (%s) from %s on %s, %s, %.1f MB of weights (max %d tokens)",
            spec.id,
            loaded.model_type,
            model_path,
            self.device,
            self.quantization,
            self._weight_bytes / 1e6,
            self.max_length,
        )

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    @property
    def name(self) -> str:
        return "mlx"

    def weight_bytes(self) -> int:
        """Bytes of the model's parameters as MLX holds them, after quantization."""
        return self._weight_bytes

    def _run_batch(self, batch: PaddedBatch) -> FloatArray:
        """Pooled states in float32 (through any Dense layers held in MLX); the head normalises them."""
        mx = self._mx
        with self._lock, mx.stream(self._device):
            if self._model is None:
                raise ProviderUnsupported("mlx: the provider is closed")
            mask = mx.array(batch.attention_mask.astype(np.int32))
            hidden = self._model(
                mx.array(batch.input_ids.astype(np.int32)), mask, mx.array(batch.token_type_ids.astype(np.int32))
            )
            pooled = self._pool(hidden.astype(mx.float32), mask)
            for layer, activation in zip(self._model.dense, self._dense_activations, strict=True):
                pooled = layer(pooled)
                if activation == "tanh":
                    pooled = mx.tanh(pooled)
            pooled = pooled.astype(mx.float32)
            mx.eval(pooled)  # MLX is lazy: nothing above has run until here
            result: FloatArray = np.array(pooled, dtype=np.float32)
            return result

    def _pool(self, hidden: Any, mask: Any) -> Any:
        mx = self._mx
        pooling = self._spec.pooling
        if pooling == "cls":
            return hidden[:, 0]
        if pooling == "last_token":
            # Right padding: the last real token sits at (number of real tokens - 1).
            last = mask.sum(axis=1) - 1
            return hidden[mx.arange(hidden.shape[0]), last]
        weights = mask.astype(mx.float32)[:, :, None]
        return (hidden * weights).sum(axis=1) / mx.maximum(weights.sum(axis=1), 1e-9)

    def close(self) -> None:
        self._model = None


def save_quantized(
    model_path: Path, out_dir: Path, bits: int, group_size: int | None = None, *, dense_in_weights: bool = False
) -> Path:
    """Write an MLX-quantized copy of a checkpoint folder that MlxProvider (and mlx-lm) load as is:
    model.safetensors with packed weights and config.json with a `quantization` entry, as mlx-community's
    conversions. `group_size` None: 64 at 8 bits, 32 at 4. `dense_in_weights`: sentence-transformers
    Dense layers quantized into model.safetensors (`dense.N`, mlx-community's EmbeddingGemma layout)
    instead of left in their folders."""
    _, models = _import_mlx()
    try:
        path: Path = models.save_quantized(model_path, out_dir, bits, group_size, dense_in_weights=dense_in_weights)
    except models.UnsupportedCheckpoint as exc:
        raise ProviderUnsupported(f"mlx: {exc}") from exc
    return path

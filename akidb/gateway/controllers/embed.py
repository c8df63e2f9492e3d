from __future__ import annotations

import base64

import numpy as np
from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from akidb.embedding.router import EmbeddingRouter
from akidb.gateway.errors import error_responses
from akidb.gateway.schemas import (
    EmbedRequest,
    EmbedResponse,
    OpenAIEmbedding,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    OpenAIUsage,
    Usage,
)
from akidb.gateway.vectors_json import as_vector, as_vectors


class EmbedController(Controller):
    path = "/api/v1/embed"
    tags = ("embeddings",)

    @post("/", status_code=200, operation_id="embed", responses=error_responses(404, 409, 422, 429, 503))
    async def embed(
        self, data: JSONBody[EmbedRequest], embedding_router: NamedDependency[EmbeddingRouter]
    ) -> EmbedResponse:
        result = await embedding_router.embed_texts(
            data.model, data.inputs, data.input_type, normalize=data.normalize, dimensions=data.dimensions
        )
        vectors = result.embeddings.vectors
        return EmbedResponse(
            embeddings=as_vectors(vectors),
            model=result.model,
            dimension=int(vectors.shape[1]),
            usage=Usage(total_tokens=result.embeddings.total_tokens, duration_ms=round(result.duration_ms, 3)),
        )


class OpenAIEmbeddingsController(Controller):
    """The OpenAI-compatible form, so OpenAI client libraries can point their base URL here."""

    path = "/v1/embeddings"
    tags = ("embeddings",)

    @post("/", status_code=200, operation_id="createEmbeddings", responses=error_responses(404, 409, 422, 429, 503))
    async def embeddings(
        self, data: JSONBody[OpenAIEmbeddingRequest], embedding_router: NamedDependency[EmbeddingRouter]
    ) -> OpenAIEmbeddingResponse:
        texts = [data.input] if isinstance(data.input, str) else data.input
        result = await embedding_router.embed_texts(
            data.model, texts, data.input_type, dimensions=data.dimensions, field="input"
        )
        vectors = result.embeddings.vectors
        if data.encoding_format == "base64":
            little_endian = vectors.astype("<f4", copy=False)
            items = [
                OpenAIEmbedding(index=i, embedding=base64.b64encode(np.ascontiguousarray(row).tobytes()).decode())
                for i, row in enumerate(little_endian)
            ]
        else:
            items = [OpenAIEmbedding(index=i, embedding=as_vector(row)) for i, row in enumerate(vectors)]
        tokens = result.embeddings.total_tokens
        return OpenAIEmbeddingResponse(
            data=items, model=result.model, usage=OpenAIUsage(prompt_tokens=tokens, total_tokens=tokens)
        )

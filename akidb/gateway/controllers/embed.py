from __future__ import annotations

from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from akidb.gateway.errors import error_responses
from akidb.gateway.runtime import Runtime
from akidb.gateway.schemas import EmbedRequest, EmbedResponse, Usage


class EmbedController(Controller):
    path = "/api/v1/embed"
    tags = ("embeddings",)

    @post("/", status_code=200, responses=error_responses(404, 422, 503))
    async def embed(self, data: JSONBody[EmbedRequest], runtime: NamedDependency[Runtime]) -> EmbedResponse:
        result = await runtime.router.embed_texts(data.model, data.inputs, data.input_type, normalize=data.normalize)
        vectors = result.embeddings.vectors
        return EmbedResponse(
            embeddings=vectors.tolist(),
            model=result.model,
            dimension=int(vectors.shape[1]),
            usage=Usage(total_tokens=result.embeddings.total_tokens, duration_ms=round(result.duration_ms, 3)),
        )

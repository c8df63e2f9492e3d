from __future__ import annotations

import anyio.to_thread
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromPath

from akidb.embedding.spec import ModelSpec
from akidb.gateway.errors import error_responses
from akidb.gateway.runtime import Runtime
from akidb.gateway.schemas import ModelInfo, ModelList


def to_wire(spec: ModelSpec, runtime: NamedDependency[Runtime]) -> ModelInfo:
    return ModelInfo(
        id=spec.id,
        name=spec.name,
        hf_path=spec.hf_path,
        dimension=spec.dimension,
        max_seq_length=spec.max_seq_length,
        pooling=spec.pooling,
        parameters_m=spec.parameters_m,
        size_mb=spec.size_mb,
        languages=list(spec.languages),
        use_cases=list(spec.use_cases),
        default_quantization=spec.default_quantization,
        is_default=spec.id == runtime.router.default_model,
        description=spec.description,
        available=runtime.router.is_available(spec.id),
        loaded=runtime.router.is_loaded(spec.id),
        query_prefix=spec.query_prefix,
        document_prefix=spec.document_prefix,
        matryoshka_dimensions=list(spec.matryoshka_dimensions),
    )


class ModelController(Controller):
    path = "/api/v1/models"
    tags = ("models",)

    @get("/")
    async def list_all(self, runtime: NamedDependency[Runtime]) -> ModelList:
        # Availability looks at the disk (HF cache, packages): off the loop.
        models = await anyio.to_thread.run_sync(lambda: [to_wire(spec, runtime) for spec in runtime.registry])
        return ModelList(models=models, default_model=runtime.router.default_model)

    @get("/{model_id:str}", responses=error_responses(404))
    async def get_one(self, model_id: FromPath[str], runtime: NamedDependency[Runtime]) -> ModelInfo:
        spec = runtime.registry.get(model_id)
        return await anyio.to_thread.run_sync(to_wire, spec, runtime)

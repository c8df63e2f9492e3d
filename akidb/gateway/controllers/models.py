from __future__ import annotations

import anyio.to_thread
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath

from akidb.embedding.loader import ModelLoader
from akidb.embedding.registry import ModelRegistry
from akidb.embedding.spec import ModelSpec
from akidb.gateway.errors import error_responses
from akidb.gateway.schemas import ModelInfo, ModelList, ModelUnloaded


def to_wire(spec: ModelSpec, loader: ModelLoader) -> ModelInfo:
    loaded = loader.loaded_info(spec.id)
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
        is_default=spec.id == loader.default_model,
        description=spec.description,
        available=loader.is_available(spec.id),
        loaded=loaded is not None,
        query_prefix=spec.query_prefix,
        document_prefix=spec.document_prefix,
        matryoshka_dimensions=list(spec.matryoshka_dimensions),
        providers=list(spec.providers),
        loaded_provider=loaded.provider if loaded else None,
        loaded_quantization=loaded.quantization if loaded else None,
        memory_mb=round(loaded.memory_bytes / 2**20, 1) if loaded else None,
    )


class ModelController(Controller):
    path = "/api/v1/models"
    tags = ("models",)

    @get("/", operation_id="listModels")
    async def list_all(
        self, model_registry: NamedDependency[ModelRegistry], model_loader: NamedDependency[ModelLoader]
    ) -> ModelList:
        # Availability looks at the disk (HF cache, packages): off the loop.
        models = await anyio.to_thread.run_sync(lambda: [to_wire(spec, model_loader) for spec in model_registry])
        return ModelList(models=models, default_model=model_loader.default_model)

    @get("/{model_id:str}", operation_id="getModel", responses=error_responses(404))
    async def get_one(
        self,
        model_id: FromPath[str],
        model_registry: NamedDependency[ModelRegistry],
        model_loader: NamedDependency[ModelLoader],
    ) -> ModelInfo:
        spec = model_registry.get(model_id)
        return await anyio.to_thread.run_sync(to_wire, spec, model_loader)

    @post("/{model_id:str}/load", status_code=200, operation_id="loadModel", responses=error_responses(404, 409))
    async def load(
        self,
        model_id: FromPath[str],
        model_registry: NamedDependency[ModelRegistry],
        model_loader: NamedDependency[ModelLoader],
    ) -> ModelInfo:
        """Load and warm a model now (a no-op if it is loaded); may unload the least recently used one."""
        spec = model_registry.get(model_id)
        await anyio.to_thread.run_sync(model_loader.load, model_id)
        return await anyio.to_thread.run_sync(to_wire, spec, model_loader)

    @post("/{model_id:str}/unload", status_code=200, operation_id="unloadModel", responses=error_responses(404))
    async def unload(self, model_id: FromPath[str], model_loader: NamedDependency[ModelLoader]) -> ModelUnloaded:
        """Free a model's memory; the next request that needs it loads it again."""
        unloaded = await anyio.to_thread.run_sync(model_loader.unload, model_id)
        return ModelUnloaded(id=model_id, unloaded=unloaded)

from __future__ import annotations

from litestar import Controller, Response, get
from litestar.di import NamedDependency

from akidb.gateway.runtime import Runtime
from akidb.gateway.schemas import Health


class HealthController(Controller):
    path = "/health"
    tags = ("operations",)

    @get("/live")
    async def live(self) -> Health:
        return Health(status="ok")

    @get("/ready")
    async def ready(self, runtime: NamedDependency[Runtime]) -> Response[Health]:
        readiness = runtime.readiness
        if readiness.ready:
            return Response(Health(status="ready"))
        return Response(Health(status="not_ready", detail=readiness.reason), status_code=503)

from __future__ import annotations

from litestar import Controller, Response, get
from litestar.di import NamedDependency

from akidb.gateway.runtime import Readiness
from akidb.gateway.schemas import Health


class HealthController(Controller):
    path = "/health"
    tags = ("operations",)

    @get("/live", operation_id="live")
    async def live(self) -> Health:
        return Health(status="ok")

    @get("/ready", operation_id="ready")
    async def ready(self, readiness: NamedDependency[Readiness]) -> Response[Health]:
        if readiness.ready:
            return Response(Health(status="ready"))
        return Response(Health(status="not_ready", detail=readiness.reason), status_code=503)

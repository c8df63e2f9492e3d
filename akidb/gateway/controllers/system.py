from __future__ import annotations

import msgspec
from litestar import Controller, Response, get
from litestar.di import NamedDependency

from akidb.collections.documents import MAX_PAGE
from akidb.config import LimitsSettings
from akidb.gateway.runtime import Readiness
from akidb.gateway.schemas import Health, Limits


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


class LimitsController(Controller):
    """GET /api/v1/limits: the server's request limits (a read key), for clients and `akidb import`."""

    path = "/api/v1/limits"
    tags = ("operations",)

    @get("/", operation_id="getLimits", sync_to_thread=False)
    def limits(self, limits: NamedDependency[LimitsSettings]) -> Limits:
        return Limits(max_page_size=MAX_PAGE, **msgspec.structs.asdict(limits))

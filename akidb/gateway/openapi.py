"""Make the OpenAPI document state what the server enforces, where Litestar's generator cannot know it."""

from __future__ import annotations

from litestar import Litestar
from litestar.openapi.spec import Schema

from akidb.config import Settings
from akidb.gateway.schemas import request_structs


def tell_the_truth(app: Litestar, settings: Settings) -> None:
    _forbid_unknown_fields(app)


def _forbid_unknown_fields(app: Litestar) -> None:
    """Request Structs reject unknown fields; say so in the OpenAPI document, which Litestar does not."""
    schemas = app.openapi_schema.components.schemas or {}
    for struct in request_structs():
        component = schemas.get(struct.__name__)
        if isinstance(component, Schema):
            component.additional_properties = False

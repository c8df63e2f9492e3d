from __future__ import annotations

from typing import Any

import anyio.to_thread
from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from akidb.auth.service import KeyService
from akidb.gateway.errors import error_responses
from akidb.gateway.schemas import ApiKey, ApiKeyCreated, ApiKeyList, KeyCreate
from akidb.storage.keys import KeyRecord


def _fields(record: KeyRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "role": record.role,
        "collections": None if record.collections is None else list(record.collections),
        "expires_at": record.expires_at.isoformat() if record.expires_at else None,
        "created_at": record.created_at.isoformat(),
        "revoked_at": record.revoked_at.isoformat() if record.revoked_at else None,
    }


class KeyController(Controller):
    path = "/api/v1/keys"
    tags = ("access control",)

    @post("/", status_code=201, operation_id="createKey", responses=error_responses(422))
    async def create(self, data: JSONBody[KeyCreate], key_service: NamedDependency[KeyService]) -> ApiKeyCreated:
        """Make a key; the answer holds the key itself, this once (only its hash is stored)."""
        created = await anyio.to_thread.run_sync(
            lambda: key_service.create(
                name=data.name, role=data.role, collections=data.collections, expires_at=data.expires_at
            )
        )
        return ApiKeyCreated(**_fields(created.record), key=created.key)

    @get("/", operation_id="listKeys")
    async def list_all(self, key_service: NamedDependency[KeyService]) -> ApiKeyList:
        """Every key made through the API or the CLI, revoked ones included, without secrets."""
        records = await anyio.to_thread.run_sync(key_service.list)
        return ApiKeyList(keys=[ApiKey(**_fields(record)) for record in records])

    @delete("/{key_id:str}", status_code=204, operation_id="revokeKey", responses=error_responses(404))
    async def revoke(self, key_id: FromPath[str], key_service: NamedDependency[KeyService]) -> None:
        """Revoke a key: every process that shares the database refuses it within auth.key_cache_ms."""
        await anyio.to_thread.run_sync(key_service.revoke, key_id)

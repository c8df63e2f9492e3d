"""API key rows: insert, look up by id, list, revoke. Hashes only; the storage never sees a key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Engine, Table, insert, select, update

from akidb.storage.db import WRITE_OPTION
from akidb.storage.models import ApiKeyRow

_keys = cast(Table, ApiKeyRow.__table__)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    name: str
    role: str
    collections: tuple[str, ...] | None
    secret_hash: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def usable(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands timestamps back without a zone; they were written in UTC.
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


def _record(row: Any) -> KeyRecord:
    return KeyRecord(
        id=row.id,
        name=row.name,
        role=row.role,
        collections=None if row.collections is None else tuple(row.collections),
        secret_hash=row.secret_hash,
        created_at=cast(datetime, _utc(row.created_at)),
        expires_at=_utc(row.expires_at),
        revoked_at=_utc(row.revoked_at),
    )


class KeyStore:
    """Every call is one short transaction and blocks."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = engine.execution_options(**{WRITE_OPTION: True})

    def insert(self, record: KeyRecord) -> None:
        with self._writer.begin() as conn:
            conn.execute(
                insert(_keys).values(
                    id=record.id,
                    name=record.name,
                    role=record.role,
                    collections=None if record.collections is None else list(record.collections),
                    secret_hash=record.secret_hash,
                    created_at=record.created_at,
                    expires_at=record.expires_at,
                    revoked_at=None,
                )
            )

    def get(self, key_id: str) -> KeyRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(_keys).where(_keys.c.id == key_id)).first()
        return None if row is None else _record(row)

    def list(self) -> list[KeyRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(_keys).order_by(_keys.c.created_at, _keys.c.id)).all()
        return [_record(row) for row in rows]

    def revoke(self, key_id: str, now: datetime) -> KeyRecord | None:
        """Mark the key revoked (a no-op on one already revoked); None if there is no such key."""
        with self._writer.begin() as conn:
            conn.execute(update(_keys).where(_keys.c.id == key_id, _keys.c.revoked_at.is_(None)).values(revoked_at=now))
            row = conn.execute(select(_keys).where(_keys.c.id == key_id)).first()
        return None if row is None else _record(row)

"""API keys at run time: create (shown once), list, revoke, and authenticate a request's key.

Keys live in the database, so every process that shares it sees a new key at once (a cache miss asks the
database) and a revocation within `auth.key_cache_ms` (a cached answer is trusted that long).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from akidb.auth.keys import (
    BOOTSTRAP_ADMIN,
    ROLES,
    Principal,
    configured_key_hash,
    hash_key,
    key_id_of,
    new_key,
    same_hash,
)
from akidb.errors import InvalidRequest, NotFound, Unauthorized
from akidb.storage.keys import KeyRecord, KeyStore

log = logging.getLogger("akidb.auth")

MAX_KEY_NAME = 200
MAX_SCOPE_PATTERNS = 100
# A collection name or a glob over names (* ? and [...]).
SCOPE_PATTERN = re.compile(r"^[A-Za-z0-9_\-*?\[\]!]{1,63}$")
# Unknown ids are cached too (so a flood of bad keys does not become a flood of queries), within bounds.
_MAX_CACHED = 10_000


@dataclass(frozen=True, slots=True)
class _Cached:
    record: KeyRecord | None
    checked_at: float
    # Built once per database read, not per request: the principal, and the expiry as a Unix time.
    principal: Principal | None
    expires_at_s: float | None


def _cached(record: KeyRecord | None, checked_at: float) -> _Cached:
    principal = None if record is None else _principal(record)
    expires = None if record is None or record.expires_at is None else record.expires_at.timestamp()
    return _Cached(record, checked_at, principal, expires)


@dataclass(frozen=True, slots=True)
class CreatedKey:
    record: KeyRecord
    key: str


def _principal(record: KeyRecord) -> Principal:
    return Principal(key_id=record.id, name=record.name, role=record.role, collections=record.collections)  # type: ignore[arg-type]


class KeyService:
    def __init__(
        self,
        store: KeyStore,
        *,
        admin_key: str = "",
        cache_ms: float = 500.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self._admin_hash = configured_key_hash(admin_key)
        self._cache_s = cache_ms / 1000.0
        self._clock = clock
        self._cache: dict[str, _Cached] = {}

    # --- authentication (every protected request) ------------------------------------------------------

    def cached(self, presented: str) -> Principal | None:
        """The caller from memory, or None when the database must be asked (`lookup`). Raises Unauthorized
        for a key that cannot be ours or that the cache already knows to be bad."""
        presented_hash = hash_key(presented)
        if self._admin_hash is not None and same_hash(presented_hash, self._admin_hash):
            return BOOTSTRAP_ADMIN
        key_id = key_id_of(presented)
        if key_id is None:
            raise Unauthorized("unknown API key")
        entry = self._cache.get(key_id)
        if entry is None or self._clock() - entry.checked_at > self._cache_s:
            return None
        return self._check(entry, presented_hash)

    def lookup(self, presented: str) -> Principal:
        """Blocking: read the key's row, remember it, and check the key against it."""
        key_id = key_id_of(presented)
        if key_id is None:
            raise Unauthorized("unknown API key")
        entry = _cached(self.store.get(key_id), self._clock())
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[key_id] = entry
        return self._check(entry, hash_key(presented))

    def _check(self, entry: _Cached, presented_hash: str) -> Principal:
        record, principal = entry.record, entry.principal
        if record is None or principal is None or not same_hash(presented_hash, record.secret_hash):
            raise Unauthorized("unknown API key")
        if record.revoked_at is not None:
            raise Unauthorized(f"API key {record.id} was revoked")
        if entry.expires_at_s is not None and entry.expires_at_s <= time.time():
            raise Unauthorized(
                f"API key {record.id} expired at {record.expires_at.isoformat() if record.expires_at else ''}"
            )
        return principal

    # --- management (admin routes and `akidb keys`; blocking) -------------------------------------------

    def create(
        self, *, name: str, role: str, collections: list[str] | None = None, expires_at: datetime | None = None
    ) -> CreatedKey:
        name = name.strip()
        if not name or len(name) > MAX_KEY_NAME or "\x00" in name:
            raise InvalidRequest(f"name: 1 to {MAX_KEY_NAME} characters, no NUL", extra={"field": "name"})
        if role not in ROLES:
            raise InvalidRequest(f"role: one of {', '.join(ROLES)}, got '{role}'", extra={"field": "role"})
        scope = None if collections is None else tuple(dict.fromkeys(collections))
        if scope is not None:
            if not scope or len(scope) > MAX_SCOPE_PATTERNS:
                raise InvalidRequest(
                    f"collections: 1 to {MAX_SCOPE_PATTERNS} names or globs, or null for every collection",
                    extra={"field": "collections"},
                )
            for position, pattern in enumerate(scope):
                if not SCOPE_PATTERN.fullmatch(pattern):
                    raise InvalidRequest(
                        f"collections[{position}]: '{pattern}' is not a collection name or a glob over names",
                        extra={"field": f"collections[{position}]"},
                    )
        now = datetime.now(UTC)
        if expires_at is not None:
            if expires_at.tzinfo is None:
                expires_at = expires_at.replace(tzinfo=UTC)
            if expires_at <= now:
                raise InvalidRequest("expires_at: must be in the future", extra={"field": "expires_at"})
        key_id, key = new_key()
        record = KeyRecord(
            id=key_id,
            name=name,
            role=role,
            collections=scope,
            secret_hash=hash_key(key),
            created_at=now,
            expires_at=expires_at,
            revoked_at=None,
        )
        self.store.insert(record)
        log.info("created API key %s (%s), role %s, collections %s", key_id, name, role, scope or "all")
        return CreatedKey(record=record, key=key)

    def list(self) -> list[KeyRecord]:
        return self.store.list()

    def revoke(self, key_id: str) -> KeyRecord:
        # Ids are hex; anything else (a NUL, which PostgreSQL cannot compare with) names no key.
        record = self.store.revoke(key_id, datetime.now(UTC)) if key_id.isalnum() else None
        if record is None:
            raise NotFound(f"API key '{key_id}' does not exist")
        self._cache.pop(key_id, None)
        log.info("revoked API key %s (%s)", record.id, record.name)
        return record

    def has_usable_key(self) -> bool:
        """Whether anyone can authenticate: the bootstrap key, or a key in the database that is neither
        revoked nor expired."""
        if self._admin_hash is not None:
            return True
        now = datetime.now(UTC)
        return any(record.usable(now) for record in self.store.list())

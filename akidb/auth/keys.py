"""What a key is: its format, its hash, and the principal it stands for (role and collection scope)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal, get_args

Role = Literal["read", "write", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
_RANK = {role: rank for rank, role in enumerate(ROLES)}

PREFIX = "akidb_"
# akidb_<16 hex id>_<43 url-safe characters of secret>: the id finds the row, the whole key is hashed.
_KEY_RE = re.compile(r"^akidb_([0-9a-f]{16})_[A-Za-z0-9_-]{20,}$")
HASH_PREFIX = "sha256:"


def hash_key(key: str) -> str:
    """SHA-256 of the whole key, in hex. Keys carry 256 random bits, so a slow password hash would only add
    latency to every request: no dictionary attack applies to them."""
    return hashlib.sha256(key.encode()).hexdigest()


def same_hash(presented_hash: str, stored_hash: str) -> bool:
    return hmac.compare_digest(presented_hash.encode(), stored_hash.encode())


def new_key() -> tuple[str, str]:
    """(key id, the key): the key is shown once and never stored."""
    key_id = secrets.token_hex(8)
    return key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def key_id_of(key: str) -> str | None:
    """The id inside a key of our format; None for anything else."""
    match = _KEY_RE.match(key)
    return match.group(1) if match else None


def configured_key_hash(setting: str) -> str | None:
    """auth.admin_key as a hash: `sha256:<hex>` as given, a plain key hashed; None when empty."""
    if not setting:
        return None
    if setting.startswith(HASH_PREFIX):
        return setting[len(HASH_PREFIX) :].lower()
    return hash_key(setting)


def valid_admin_key_setting(setting: str) -> bool:
    if setting.startswith(HASH_PREFIX):
        return re.fullmatch(r"[0-9a-fA-F]{64}", setting[len(HASH_PREFIX) :]) is not None
    return len(setting) >= 16


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a key's id and name, its role, and the collections it may see (None: all)."""

    key_id: str | None
    name: str
    role: Role
    collections: tuple[str, ...] | None = None

    def has(self, role: Role) -> bool:
        return _RANK[self.role] >= _RANK[role]

    @property
    def scoped(self) -> bool:
        return self.collections is not None

    def sees(self, collection: str) -> bool:
        """Whether a collection exists for this key: its name matches one of the key's names or globs."""
        return self.collections is None or any(fnmatchcase(collection, pattern) for pattern in self.collections)

    def describe(self) -> str:
        """For logs and error messages: the key's id and name, never its secret."""
        return f"key {self.key_id} ({self.name})" if self.key_id else self.name


# Every request when auth is off (a loopback server, or auth.allow_anonymous).
ANONYMOUS = Principal(key_id=None, name="anonymous", role="admin")
# The bootstrap key from auth.admin_key.
BOOTSTRAP_ADMIN = Principal(key_id="bootstrap", name="auth.admin_key", role="admin")

"""KeyService on a real SQLite database: only hashes are stored, keys authenticate until changed, revoked or
expired, a revocation reaches another process's KeyService once its cache time has passed (a fake clock, no
sleeps), the bootstrap admin key in both forms, bad inputs to create, has_usable_key, Principal's globs and
role order, and logs that name a key but never show it."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from akidb.auth.keys import BOOTSTRAP_ADMIN, Principal, hash_key, key_id_of
from akidb.auth.service import KeyService
from akidb.errors import InvalidRequest, NotFound, Unauthorized
from akidb.storage.db import create_db_engine, migrate
from akidb.storage.keys import KeyStore

CACHE_MS = 500.0
ADMIN_KEY = "bootstrap-admin-key-0123456789"


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _engine(path: Path) -> Engine:
    return create_db_engine(f"sqlite:///{path}")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "keys.sqlite3"
    engine = _engine(path)
    migrate(engine)
    engine.dispose()
    return path


@pytest.fixture
def engine(db_path: Path) -> Iterator[Engine]:
    engine = _engine(db_path)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def keys(engine: Engine, clock: FakeClock) -> KeyService:
    return KeyService(KeyStore(engine), cache_ms=CACHE_MS, clock=clock)


def authenticate(service: KeyService, key: str) -> Principal:
    """What the guard does: the cache first, the database when the cache has no (fresh) answer."""
    return service.cached(key) or service.lookup(key)


def refused(service: KeyService, key: str) -> str:
    with pytest.raises(Unauthorized) as caught:
        authenticate(service, key)
    assert caught.value.status_code == 401
    return caught.value.detail


def _changed(key: str, position: int, alphabet: str = "AB") -> str:
    """The key with the character at `position` replaced by another one of `alphabet`."""
    new = next(char for char in alphabet if char != key[position])
    return key[:position] + new + key[position + 1 :]


# --- storage: the hash only ---------------------------------------------------------------------------


def test_only_the_hash_is_stored(keys: KeyService, engine: Engine) -> None:
    created = keys.create(name="reader", role="read", collections=["docs", "team-*"])
    key = created.key
    key_id = key_id_of(key)
    assert key_id == created.record.id
    secret = key.removeprefix(f"akidb_{key_id}_")
    assert len(secret) >= 40
    assert secret != key

    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT * FROM api_keys").mappings().all()
    assert len(rows) == 1
    row = dict(rows[0])
    assert row["id"] == key_id
    assert row["secret_hash"] == hash_key(key)
    for column, value in row.items():
        text = "" if value is None else str(value)
        assert key not in text, f"column {column} holds the key"
        assert secret not in text, f"column {column} holds the key's secret part"
    # Nor does any raw byte of the database file (WAL included) hold it.
    for path in Path(str(engine.url.database)).parent.glob("keys.sqlite3*"):
        assert secret.encode() not in path.read_bytes(), f"{path.name} holds the key's secret part"


# --- authentication ------------------------------------------------------------------------------------


def test_created_key_authenticates_as_its_principal(keys: KeyService) -> None:
    created = keys.create(name="writer", role="write", collections=["docs", "team-*"])
    principal = authenticate(keys, created.key)
    assert principal == Principal(key_id=created.record.id, name="writer", role="write", collections=("docs", "team-*"))
    # The second time from the cache, without the database.
    assert keys.cached(created.key) == principal


def test_unscoped_key_sees_every_collection(keys: KeyService) -> None:
    created = keys.create(name="all", role="admin")
    principal = authenticate(keys, created.key)
    assert principal.collections is None
    assert not principal.scoped
    assert principal.sees("anything")


@pytest.mark.parametrize("where", ["last", "first_of_secret", "in_id"])
def test_a_key_with_one_changed_character_is_refused(keys: KeyService, where: str) -> None:
    created = keys.create(name="k", role="read")
    key = created.key
    # Warm the cache with the right key: the wrong one must be refused from the cache too.
    authenticate(keys, key)
    if where == "in_id":  # another well-formed id: no such row
        tampered = _changed(key, len("akidb_") + 3, "01")
        assert key_id_of(tampered) not in (None, created.record.id)
    else:  # the right id, a wrong secret: the row's hash does not match
        tampered = _changed(key, len(key) - 1 if where == "last" else len("akidb_") + 16 + 1)
        assert key_id_of(tampered) == created.record.id
    assert tampered != key
    assert len(tampered) == len(key)
    detail = refused(keys, tampered)
    assert created.key not in detail
    # The right key still works.
    assert authenticate(keys, key).key_id == created.record.id


@pytest.mark.parametrize("presented", ["", "akidb_", "not-a-key", "akidb_0123456789abcdef_short", "Bearer x"])
def test_malformed_keys_are_refused(keys: KeyService, presented: str) -> None:
    refused(keys, presented)


def test_revoked_key_is_refused_at_once_by_the_process_that_revoked_it(keys: KeyService) -> None:
    created = keys.create(name="gone", role="read")
    authenticate(keys, created.key)  # cached
    revoked = keys.revoke(created.record.id)
    assert revoked.revoked_at is not None
    detail = refused(keys, created.key)
    assert "revoked" in detail
    assert created.record.id in detail


def test_revocation_reaches_another_process_once_the_cache_time_passed(db_path: Path, clock: FakeClock) -> None:
    """Two KeyService instances, each with its own engine on the same database: B revokes, A (with the key
    in its cache) goes on accepting it until its cache entry is older than auth.key_cache_ms, then refuses.
    The cache is what bounds the delay, and it bounds it."""
    engine_a, engine_b = _engine(db_path), _engine(db_path)
    try:
        a = KeyService(KeyStore(engine_a), cache_ms=CACHE_MS, clock=clock)
        b = KeyService(KeyStore(engine_b), cache_ms=CACHE_MS, clock=clock)
        created = b.create(name="shared", role="write")
        # A key made by another process is seen at once (a cache miss asks the database).
        assert authenticate(a, created.key).key_id == created.record.id
        assert authenticate(b, created.key).key_id == created.record.id

        clock.advance(0.1)
        b.revoke(created.record.id)
        assert "revoked" in refused(b, created.key)

        # Before the cache time has passed since A checked the key: A still trusts its cached answer.
        clock.advance(CACHE_MS / 1000.0 - 0.1 - 0.001)  # 0.499 s after A's check
        assert a.cached(created.key) is not None
        assert authenticate(a, created.key).key_id == created.record.id

        # Once it has: A asks the database again and refuses.
        clock.advance(0.002)  # 0.501 s after A's check
        assert a.cached(created.key) is None
        detail = refused(a, created.key)
        assert "revoked" in detail
        assert created.record.id in detail
        # And the refusal is cached as such: still refused without the database.
        with pytest.raises(Unauthorized, match="revoked"):
            a.cached(created.key)
    finally:
        engine_a.dispose()
        engine_b.dispose()


def test_cache_time_zero_honours_a_revocation_at_once(db_path: Path, clock: FakeClock) -> None:
    engine_a, engine_b = _engine(db_path), _engine(db_path)
    try:
        a = KeyService(KeyStore(engine_a), cache_ms=0, clock=clock)
        b = KeyService(KeyStore(engine_b), cache_ms=0, clock=clock)
        created = b.create(name="nocache", role="read")
        authenticate(a, created.key)
        b.revoke(created.record.id)
        clock.advance(0.000001)
        assert "revoked" in refused(a, created.key)
    finally:
        engine_a.dispose()
        engine_b.dispose()


def test_revoking_twice_keeps_the_first_time_and_unknown_id_is_not_found(keys: KeyService) -> None:
    created = keys.create(name="twice", role="read")
    first = keys.revoke(created.record.id)
    second = keys.revoke(created.record.id)
    assert first.revoked_at is not None
    assert second.revoked_at == first.revoked_at
    with pytest.raises(NotFound):
        keys.revoke("0123456789abcdef")


class _Later(datetime):
    """datetime whose now() is two hours ahead: the wall clock has_usable_key checks expires_at against."""

    @classmethod
    def now(cls, tz=None):  # type: ignore[no-untyped-def, override]
        return datetime.now(tz) + timedelta(hours=2)


def test_expired_key_is_refused(keys: KeyService, monkeypatch: pytest.MonkeyPatch) -> None:
    created = keys.create(name="brief", role="read", expires_at=datetime.now(UTC) + timedelta(hours=1))
    lasting = keys.create(name="lasting", role="read")
    assert authenticate(keys, created.key).key_id == created.record.id  # cached from here on

    # Two hours later by the wall clock that expires_at is checked against.
    wall_clock = time.time
    monkeypatch.setattr(time, "time", lambda: wall_clock() + 7200)
    # Refused from the cache entry as well as from the database.
    with pytest.raises(Unauthorized, match="expired"):
        keys.cached(created.key)
    detail = refused(keys, created.key)
    assert "expired" in detail
    assert created.record.id in detail
    assert authenticate(keys, lasting.key).key_id == lasting.record.id


def test_expiry_with_real_time_passing(keys: KeyService) -> None:
    """Once with the real clock: a key made to expire 0.3 s from now works, then (after 0.4 s) does not."""

    created = keys.create(name="short", role="read", expires_at=datetime.now(UTC) + timedelta(seconds=0.3))
    assert authenticate(keys, created.key).key_id == created.record.id
    time.sleep(0.4)
    assert "expired" in refused(keys, created.key)


def test_naive_expires_at_is_taken_as_utc(keys: KeyService) -> None:
    naive = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=1)
    created = keys.create(name="naive", role="read", expires_at=naive)
    assert created.record.expires_at == naive.replace(tzinfo=UTC)
    assert authenticate(keys, created.key).key_id == created.record.id


# --- the bootstrap admin key --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "setting",
    [ADMIN_KEY, f"sha256:{hash_key(ADMIN_KEY)}", f"sha256:{hash_key(ADMIN_KEY).upper()}"],
    ids=["plain", "sha256", "sha256-upper"],
)
def test_bootstrap_admin_key(engine: Engine, clock: FakeClock, setting: str) -> None:
    keys = KeyService(KeyStore(engine), admin_key=setting, cache_ms=CACHE_MS, clock=clock)
    assert keys.cached(ADMIN_KEY) is BOOTSTRAP_ADMIN
    assert BOOTSTRAP_ADMIN.has("admin")
    assert not BOOTSTRAP_ADMIN.scoped
    refused(keys, ADMIN_KEY + "x")
    refused(keys, _changed(ADMIN_KEY, 0))
    # The setting is not itself a key: presenting the hash (or the setting) gets nowhere.
    refused(keys, hash_key(ADMIN_KEY))
    refused(keys, f"sha256:{hash_key(ADMIN_KEY)}")
    assert keys.has_usable_key()


def test_no_bootstrap_key_when_the_setting_is_empty(keys: KeyService) -> None:
    refused(keys, ADMIN_KEY)
    refused(keys, "bootstrap")


# --- bad input to create -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"role": "root"}, "role"),
        ({"role": "Admin"}, "role"),
        ({"collections": []}, "collections"),
        ({"collections": ["bad name!"]}, "collections[0]"),
        ({"collections": ["docs", "also bad"]}, "collections[1]"),
        ({"collections": [""]}, "collections[0]"),
        ({"expires_at": datetime.now(UTC) - timedelta(seconds=1)}, "expires_at"),
    ],
    ids=[
        "empty-name",
        "blank-name",
        "long-name",
        "role-root",
        "role-case",
        "no-collections",
        "bad-collection",
        "second-bad",
        "empty-collection",
        "past-expiry",
    ],
)
def test_create_refuses_bad_input_naming_the_field(keys: KeyService, fields: dict[str, object], field: str) -> None:
    arguments: dict[str, object] = {"name": "ok", "role": "read", **fields}
    with pytest.raises(InvalidRequest) as caught:
        keys.create(**arguments)  # type: ignore[arg-type]
    assert caught.value.status_code == 422
    assert caught.value.extra["field"] == field
    assert caught.value.detail.startswith(field.split("[")[0])
    assert keys.list() == []


def test_create_trims_the_name_and_drops_repeated_patterns(keys: KeyService) -> None:
    created = keys.create(name="  spaced  ", role="read", collections=["a", "b", "a"])
    assert created.record.name == "spaced"
    assert created.record.collections == ("a", "b")
    assert keys.list() == [created.record]


# --- has_usable_key -----------------------------------------------------------------------------------


def test_has_usable_key(keys: KeyService, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not keys.has_usable_key()  # none at all
    first = keys.create(name="first", role="admin")
    keys.revoke(first.record.id)
    assert not keys.has_usable_key()  # revoked only
    later = keys.create(name="expiring", role="admin", expires_at=datetime.now(UTC) + timedelta(hours=1))
    assert keys.has_usable_key()  # one usable
    with monkeypatch.context() as patched:
        patched.setattr("akidb.auth.service.datetime", _Later)
        assert not keys.has_usable_key()  # revoked and expired only
    keys.revoke(later.record.id)
    keys.create(name="usable", role="read")
    assert keys.has_usable_key()


# --- Principal -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("collection", "seen"),
    [
        ("team-a", True),
        ("team-", True),
        ("team-alpha-2", True),
        ("team", False),
        ("teams", False),
        ("my-team-a", False),
        ("doc1", True),
        ("docX", True),
        ("doc", False),
        ("doc12", False),
        ("exact", True),
        ("exact2", False),
        ("Exact", False),
        ("other", False),
    ],
)
def test_principal_sees_by_glob(collection: str, seen: bool) -> None:
    principal = Principal(key_id="k", name="n", role="read", collections=("team-*", "doc?", "exact"))
    assert principal.scoped
    assert principal.sees(collection) is seen


def test_principal_has_follows_role_order() -> None:
    def of(role: str) -> Principal:
        return Principal(key_id="k", name="n", role=role)  # type: ignore[arg-type]

    assert of("read").has("read")
    assert not of("read").has("write")
    assert not of("read").has("admin")
    assert of("write").has("read")
    assert of("write").has("write")
    assert not of("write").has("admin")
    assert of("admin").has("read")
    assert of("admin").has("write")
    assert of("admin").has("admin")


def test_describe_names_the_key_not_its_secret() -> None:
    assert Principal(key_id="0123456789abcdef", name="ci", role="read").describe() == "key 0123456789abcdef (ci)"


# --- logs ----------------------------------------------------------------------------------------------


def test_create_and_revoke_log_the_id_and_name_never_the_key(
    keys: KeyService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    created = keys.create(name="logged-key", role="write", collections=["docs"])
    key_id = created.record.id
    secret = created.key.removeprefix(f"akidb_{key_id}_")
    authenticate(keys, created.key)
    refused(keys, _changed(created.key, len(created.key) - 1))
    keys.revoke(key_id)
    refused(keys, created.key)

    auth_lines = [record.getMessage() for record in caplog.records if record.name == "akidb.auth"]
    created_lines = [line for line in auth_lines if line.startswith("created")]
    revoked_lines = [line for line in auth_lines if line.startswith("revoked")]
    assert len(created_lines) == 1
    assert key_id in created_lines[0]
    assert "logged-key" in created_lines[0]
    assert len(revoked_lines) == 1
    assert key_id in revoked_lines[0]
    assert "logged-key" in revoked_lines[0]
    assert all(record.levelno == logging.INFO for record in caplog.records if record.name == "akidb.auth")
    assert created.key not in caplog.text
    assert secret not in caplog.text
    assert hash_key(created.key) not in caplog.text

"""Engine and migrations. SQLite gets WAL, foreign keys, a busy timeout and the configured synchronous level."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

WRITE_OPTION = "akidb_write"
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# An arbitrary constant naming the advisory lock migrations take on PostgreSQL.
_MIGRATION_LOCK = 0x616B6964


def create_db_engine(url: str, *, busy_timeout_ms: int = 10_000, synchronous: str = "FULL") -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000.0},
        # Searches read from anyio's worker threads (40 by default): keep a connection for each, rather
        # than opening and setting up a new SQLite connection per read past the default 5 + 10.
        pool_size=40,
        max_overflow=40,
    )

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        # Writers take the write lock up front (no deadlock-prone upgrade from a read lock);
        # readers stay deferred so that searches never wait for a writer under WAL.
        immediate = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` on this engine's database."""
    from alembic import command

    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Replicas starting together on one database migrate one at a time: the others wait for this
            # transaction (PostgreSQL's DDL is transactional) and then find nothing left to do.
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


class DatabaseInUse(Exception):
    """Another process serves this SQLite database, or keeps its indexes in this data directory; start-up
    stops with this one-line message."""


def _lock(path: Path) -> Any | None:
    """An exclusive lock on `path`, held while the returned handle stays open (the kernel drops it when the
    process dies, kill -9 included); None, and the holder's note left in the file, if another process has it."""
    import fcntl
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"akidb serve (pid {os.getpid()})\n")
    handle.flush()
    return handle


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "another process"
    except OSError:
        return "another process"


def claim_storage(url: str, index_dir: Path) -> Any:
    """Claim what this process must not share. SQLite: the database file (`<file>.lock`), one process per
    database, since a second one would keep indexes that never see the first one's writes. Any database: the
    index directory (`<dir>.lock`), since every process keeps its own indexes there; processes that share a
    PostgreSQL database each need their own data directory."""
    parsed = make_url(url)
    claims: list[Any] = []
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        path = Path(parsed.database).resolve().with_name(Path(parsed.database).name + ".lock")
        handle = _lock(path)
        if handle is None:
            raise DatabaseInUse(
                f"the SQLite database {parsed.database} is served by {_holder(path)}: SQLite takes one akidb serve "
                "per data directory; stop it, use another --data-dir, or share a PostgreSQL database (storage.url) "
                "between processes"
            )
        claims.append(handle)
    path = index_dir.resolve().with_name(index_dir.name + ".lock")
    handle = _lock(path)
    if handle is None:
        for claim in claims:
            claim.close()
        raise DatabaseInUse(
            f"the index directory {index_dir} is used by {_holder(path)}: every akidb serve keeps its own "
            "indexes, so processes sharing a database each need their own --data-dir (storage.data_dir)"
        )
    claims.append(handle)
    return claims

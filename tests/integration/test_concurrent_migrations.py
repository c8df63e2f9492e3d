"""Replicas starting together on an empty PostgreSQL database each migrate it: one at a time, all succeed."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from alembic.script import ScriptDirectory
from sqlalchemy import text

from akidb.storage.db import alembic_config, create_db_engine, migrate

PROCESSES = 4


def start_up(url: str) -> str:
    engine = create_db_engine(url)
    try:
        migrate(engine)
        with engine.connect() as conn:
            return str(conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one())
    finally:
        engine.dispose()


def test_replicas_migrating_one_empty_database_at_once_all_succeed(postgres_url: str) -> None:
    with ProcessPoolExecutor(PROCESSES, mp_context=multiprocessing.get_context("spawn")) as pool:
        versions = list(pool.map(start_up, [postgres_url] * PROCESSES))
    head = ScriptDirectory.from_config(alembic_config(postgres_url)).get_current_head()
    assert versions == [head] * PROCESSES

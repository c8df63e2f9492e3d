from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from akidb.storage.db import create_db_engine, downgrade, migrate
from akidb.storage.models import Base


def _diff(url: str) -> list[object]:
    engine = create_db_engine(url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    return list(diff)


def test_upgrade_head_matches_the_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    engine = create_db_engine(url)
    migrate(engine)
    assert set(inspect(engine).get_table_names()) >= {"collections", "documents", "tombstones", "alembic_version"}
    engine.dispose()
    assert _diff(url) == []


def test_downgrade_and_upgrade_round_trip(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    engine = create_db_engine(url)
    migrate(engine)
    downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    migrate(engine)
    migrate(engine)  # idempotent
    engine.dispose()
    assert _diff(url) == []


def test_sqlite_pragmas(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}", busy_timeout_ms=1234)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 1234
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
    engine.dispose()


def test_migrate_command(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from akidb.cli import main

    assert main(["migrate", "--data-dir", str(tmp_path)]) == 0
    assert "up to date" in capsys.readouterr().out
    assert (tmp_path / "akidb.sqlite3").is_file()
    assert _diff(f"sqlite:///{tmp_path / 'akidb.sqlite3'}") == []

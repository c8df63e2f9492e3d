"""The same storage and service paths on a real PostgreSQL server (a throwaway cluster started here)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from akidb.collections.documents import DocumentService
from akidb.collections.search import SearchService
from akidb.collections.service import CollectionService
from akidb.storage.db import create_db_engine, downgrade, migrate
from akidb.storage.models import Base
from tests.services import Services, build_services


def test_migrations_on_postgres(postgres_url: str) -> None:
    engine = create_db_engine(postgres_url)
    migrate(engine)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata) == []
    downgrade(engine, "base")
    migrate(engine)
    engine.dispose()


def test_upsert_replace_delete_search_restart_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    engine = create_db_engine(postgres_url)
    migrate(engine)

    def services() -> tuple[CollectionService, DocumentService, SearchService]:
        built = build_services(engine, tmp_path / "indexes")
        opened.append(built)
        return built.collections, built.documents, built.search

    opened: list[Services] = []

    async def scenario() -> None:
        collections, documents, search = services()
        await collections.create(name="pg", embedding_model=None, dimension=4, metric="l2")
        rng = np.random.default_rng(1)
        vectors = rng.standard_normal((30, 4)).astype(np.float32)
        docs = [
            SimpleNamespace(id=f"d{i}", text=f"t{i}", vector=v.tolist(), metadata={"i": i})
            for i, v in enumerate(vectors)
        ]
        result = await documents.upsert("pg", docs)
        assert (result.inserted, result.updated) == (30, 0)
        replaced = await documents.upsert(
            "pg", [SimpleNamespace(id="d0", text="new", vector=[9, 9, 9, 9], metadata={})]
        )
        assert (replaced.inserted, replaced.updated) == (0, 1)
        assert (await documents.delete("pg", ids=["d1", "missing"]))[0] == 1
        hits = (await search.search("pg", vector=[9, 9, 9, 9], top_k=3)).hits
        assert hits[0].id == "d0"
        assert hits[0].distance == pytest.approx(0.0, abs=1e-5)
        assert (await collections.get("pg")).document_count == 29
        # Restart without a checkpoint: the index is rebuilt from PostgreSQL's rows.
        collections2, documents2, search2 = services()
        assert opened[-1].open_collections.get("pg").graph.live_count == 29
        found = await search2.search("pg", vector=vectors[5].tolist(), top_k=1)
        assert found.hits[0].id == "d5"
        stored = await documents2.get("pg", "d0", include_vector=True)
        assert stored.text == "new"
        assert stored.vector is not None
        assert stored.vector.tolist() == [9, 9, 9, 9]
        await collections2.delete("pg")

    asyncio.run(scenario())
    for built in opened:
        built.close()
    engine.dispose()


def test_metadata_becomes_jsonb_and_back_keeping_the_rows(postgres_url: str) -> None:
    """0002 turns documents.metadata into JSONB on PostgreSQL with the rows intact, and its downgrade
    turns it back into JSON."""
    from sqlalchemy import text

    engine = create_db_engine(postgres_url)
    migrate(engine)
    downgrade(engine, "base")  # other tests of this module share the database
    migrate(engine, "0001_initial")
    metadata = {"tenant": "t1", "year": 2024, "tags": ["a", "b"], "author": {"name": "ü"}, "none": None}
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO collections (uid, name, embedding_model, dimension, metric, hnsw_m, "
                "hnsw_ef_construction, hnsw_ef_search, metadata, last_seq, next_label, created_at, updated_at) "
                "VALUES ('u', 'c', NULL, 2, 'l2', 16, 200, 64, '{}', 1, 1, now(), now())"
            )
        )
        conn.execute(
            text(
                "INSERT INTO documents (collection_id, id, label, text, metadata, vector, seq) "
                "SELECT id, 'd', 0, NULL, CAST(:md AS json), '\\x00', 1 FROM collections"
            ),
            {"md": json.dumps(metadata)},
        )

    def column_type() -> str:
        with engine.connect() as conn:
            return str(
                conn.execute(
                    text(
                        "SELECT data_type FROM information_schema.columns "
                        "WHERE table_name = 'documents' AND column_name = 'metadata'"
                    )
                ).scalar_one()
            )

    assert column_type() == "json"
    migrate(engine)
    assert column_type() == "jsonb"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT metadata FROM documents")).scalar_one() == metadata
        # JSONB answers JSON queries natively (what a future SQL-side filter could use).
        assert conn.execute(text('SELECT metadata @> \'{"tags": ["b"]}\' FROM documents')).scalar_one() is True
    downgrade(engine, "0001_initial")
    assert column_type() == "json"
    migrate(engine)
    engine.dispose()

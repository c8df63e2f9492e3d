"""RAM-first reads and one-transaction upserts, on real SQLite and PostgreSQL with real hnswlib: a search's hits
come from memory (ids, metadata) with no SQL unless `include` asks for text or vectors (then one query), an
upsert batch is one transaction whose statement count does not grow with the batch, and what memory shows
equals what the database holds after updates and deletes."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, event

from akidb.storage.db import create_db_engine, migrate
from tests.services import Doc, Services, build_services

T = TypeVar("T")
DIM = 8


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def vector(seed: int) -> list[float]:
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32).tolist()  # type: ignore[no-any-return]


@dataclass
class Counts:
    checkouts: int = 0
    statements: int = 0
    commits: int = 0


@contextmanager
def counting(engine: Engine) -> Iterator[Counts]:
    """Pool checkouts (every read takes one, raw DBAPI reads included), statements through SQLAlchemy, commits."""
    counts = Counts()

    def checkout(*_: Any) -> None:
        counts.checkouts += 1

    def statement(*_: Any) -> None:
        counts.statements += 1

    def commit(*_: Any) -> None:
        counts.commits += 1

    listeners = [(engine.pool, "checkout", checkout), (engine, "before_cursor_execute", statement)]
    listeners.append((engine, "commit", commit))
    for target, name, fn in listeners:
        event.listen(target, name, fn)
    try:
        yield counts
    finally:
        for target, name, fn in listeners:
            event.remove(target, name, fn)


@pytest.fixture(params=["sqlite", "postgresql"])
def services(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Services]:
    url = f"sqlite:///{tmp_path / 'akidb.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = create_db_engine(url)
    migrate(engine)
    built = build_services(engine, tmp_path / "indexes")
    try:
        yield built
    finally:
        built.close()
        engine.dispose()


def fill(services: Services, name: str, count: int) -> None:
    async def scenario() -> None:
        await services.collections.create(name=name, embedding_model=None, dimension=DIM)
        docs = [Doc(f"d{i}", f"text {i}", vector(i), {"n": i, "tag": ["a", "b"][i % 2]}) for i in range(count)]
        await services.documents.upsert(name, docs)

    run(scenario())


def test_search_hydrates_from_memory_and_reads_text_in_one_query(services: Services) -> None:
    fill(services, "ram", 40)
    engine = services.store.engine
    for include, reads in ((("metadata",), 0), ((), 0), (("text", "metadata"), 1), (("vector",), 1)):
        with counting(engine) as counts:
            result = run(services.search.search("ram", vector=vector(3), top_k=5, include=include))
        assert counts.checkouts == reads, include
        assert result.hits[0].id == "d3"
        hit = result.hits[0]
        assert hit.metadata == ({"n": 3, "tag": "b"} if "metadata" in include else None)
        assert hit.text == ("text 3" if "text" in include else None)
        assert (hit.vector is not None) == ("vector" in include)
    # The hybrid and keyword modes hydrate the same way.
    with counting(engine) as counts:
        result = run(services.search.search("ram", query="text", mode="keyword", top_k=3, include=("metadata",)))
    assert counts.checkouts == 0
    assert len(result.hits) == 3


def test_upsert_batch_is_one_transaction(services: Services) -> None:
    fill(services, "tx", 1)
    engine = services.store.engine
    statements = []
    for size, first in ((10, 100), (100, 200), (100, 200)):  # the last one replaces the second's documents
        docs = [Doc(f"u{first + i}", f"t {i}", vector(first + i), {"i": i}) for i in range(size)]
        with counting(engine) as counts:
            result = run(services.documents.upsert("tx", docs))
        assert counts.commits == 1
        statements.append(counts.statements)
        assert result.inserted + result.updated == size
    assert result.updated == 100
    assert statements[0] == statements[1] == statements[2], statements  # executemany: not one per row
    # The rows as the driver took them read back as written (JSONB on PostgreSQL: an object, not a string).
    stored = services.store.get_document(services.open_collections.get("tx").id, "u207", with_vector=True)
    assert (stored.text, stored.metadata, stored.seq) == ("t 7", {"i": 7}, result.seq - 92)
    assert stored.vector is not None
    assert stored.vector.tolist() == np.asarray(vector(207), dtype=np.float32).tolist()


@dataclass(frozen=True)
class Step:
    upserts: dict[str, tuple[str | None, dict[str, Any], int]]
    deletes: list[str]


# No NUL (refused: PostgreSQL cannot store it) and no lone surrogates (not valid JSON text).
CHARS = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))


def texts(min_size: int = 0, max_size: int = 5) -> st.SearchStrategy[str]:
    return st.text(CHARS, min_size=min_size, max_size=max_size)


JSON_SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False)
) | texts(max_size=5)
METADATA = st.dictionaries(
    texts(max_size=4),
    st.one_of(
        JSON_SCALAR, st.lists(JSON_SCALAR, max_size=3), st.dictionaries(texts(max_size=3), JSON_SCALAR, max_size=2)
    ),
    max_size=3,
)
IDS = [f"p{i}" for i in range(8)]
STEP = st.builds(
    Step,
    upserts=st.dictionaries(
        st.sampled_from(IDS),
        st.tuples(st.none() | texts(min_size=1, max_size=6).filter(str.strip), METADATA, st.integers(0, 4)),
        max_size=4,
    ),
    deletes=st.lists(st.sampled_from(IDS), max_size=2),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=1, max_size=5))
def test_memory_shows_what_the_database_holds(steps: list[Step]) -> None:
    """After any upserts (new and replaced documents, same or other vectors) and deletes, every search hit's id,
    metadata and text equal a reference dict and the database's own rows (SQLite; PostgreSQL is covered by the
    two tests above and the collection state machine)."""
    root = Path(tempfile.mkdtemp())
    engine = create_db_engine(f"sqlite:///{root / 'akidb.db'}")
    migrate(engine)
    services = build_services(engine, root / "indexes")
    try:
        run(services.collections.create(name="p", embedding_model=None, dimension=DIM))
        reference: dict[str, tuple[str | None, dict[str, Any]]] = {}
        for step in steps:
            if step.upserts:
                docs = [
                    Doc(doc_id, text, vector(seed), metadata) for doc_id, (text, metadata, seed) in step.upserts.items()
                ]
                run(services.documents.upsert("p", docs))
                reference |= {doc_id: (text, metadata) for doc_id, (text, metadata, _) in step.upserts.items()}
            if step.deletes:
                run(services.documents.delete("p", ids=step.deletes))
                for doc_id in step.deletes:
                    reference.pop(doc_id, None)
        result = run(services.search.search("p", vector=vector(0), top_k=10, include=("text", "metadata")))
        assert {hit.id: (hit.text, hit.metadata) for hit in result.hits} == reference
        handle = services.open_collections.get("p")
        rows = services.store.documents_by_id(
            handle.id, list(reference), with_text=True, with_metadata=True, with_vector=False
        )
        assert {row.id: (row.text, row.metadata) for row in rows.values()} == reference
    finally:
        services.close()
        engine.dispose()
        shutil.rmtree(root, ignore_errors=True)

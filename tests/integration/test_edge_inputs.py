"""Inputs the fuzzer found to be 500s on PostgreSQL (NUL characters) or to make scores overflow: each is a
4xx naming its field with nothing written, and SQLite and PostgreSQL answer alike."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from akidb.auth.service import KeyService
from akidb.collections.search import Fusion
from akidb.errors import AkidbError, InvalidRequest, NotFound
from akidb.storage.db import create_db_engine, migrate
from akidb.storage.keys import KeyStore
from tests.services import Services, build_services


@pytest.fixture(params=["sqlite", "postgresql"])
def services(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Services]:
    url = (
        f"sqlite:///{tmp_path / 'db.sqlite3'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    )
    engine = create_db_engine(url)
    migrate(engine)
    built = build_services(engine, tmp_path / f"indexes-{request.param}")
    yield built
    built.close()
    engine.dispose()


def _doc(doc_id: str, vector: list[float]) -> SimpleNamespace:
    return SimpleNamespace(id=doc_id, text="t", vector=vector, metadata={})


def _refused(call: object, status: int, field: str | None = None) -> AkidbError:
    with pytest.raises(AkidbError) as info:
        asyncio.run(call)  # type: ignore[arg-type]
    assert info.value.status_code == status, info.value.detail
    if field is not None:
        assert info.value.extra.get("field") == field, info.value.extra
    return info.value


def test_nul_characters_and_overflowing_numbers_are_the_callers_mistake(services: Services) -> None:
    documents, search = services.documents, services.search
    asyncio.run(services.collections.create(name="edge", embedding_model=None, dimension=2, metric="l2"))
    asyncio.run(documents.upsert("edge", [_doc("ok", [1.0, 2.0])]))

    _refused(documents.upsert("edge", [_doc("a\x00b", [1.0, 1.0])]), 422, "documents[0].id")
    _refused(documents.upsert("edge", [_doc("big", [3e38, 3e38])]), 422, "documents[0].vector")
    _refused(documents.get("edge", "a\x00b", include_vector=False), 404)
    nul_cursor = base64.urlsafe_b64encode(b"\x00").decode()
    _refused(documents.list("edge", limit=10, cursor=nul_cursor, include_vector=False), 422, "cursor")
    _refused(search.search("edge", vector=[3e38, 3e38], top_k=1), 422)
    huge = Fusion(dense_weight=1.7e308, keyword_weight=1.7e308)
    _refused(search.search("edge", query="t", vector=None, top_k=1, mode="keyword", fusion=huge), 422)
    # Nothing was written by any of them.
    assert asyncio.run(documents.count("edge")) == 1
    asyncio.run(services.collections.delete("edge"))


def test_keys_refuse_nul_characters_on_every_database(services: Services) -> None:
    keys = KeyService(KeyStore(services.store.engine))
    with pytest.raises(InvalidRequest) as info:
        keys.create(name="a\x00b", role="read")
    assert info.value.extra["field"] == "name"
    with pytest.raises(NotFound):
        keys.revoke("a\x00b")
    assert keys.list() == []

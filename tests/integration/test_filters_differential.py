"""Filters through the services, on SQLite and on PostgreSQL, against the reference evaluator of API.md.

Random metadata (nested objects, arrays, ints, floats, bools, null, strings, missing keys) is written,
replaced and deleted through DocumentService; then for random filters `count`, `get` (paged by cursor,
with and without ids), `delete` with `dry_run`, and filtered exact search must give what the reference
evaluator says, and a real delete must remove exactly those documents. The collections reopen from the
database between the writes and the reads, so what the mirror was rebuilt from (JSON text on SQLite,
JSONB on PostgreSQL) is what is checked.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from akidb.errors import InvalidRequest
from akidb.storage.db import create_db_engine, migrate
from tests.filter_reference import matches
from tests.filter_strategies import METADATA, filters
from tests.oracle import brute_distances
from tests.services import Services, build_services

DIM = 4
names = itertools.count()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    root = tmp_path_factory.mktemp(f"filters-{request.param}")
    url = f"sqlite:///{root / 'db.sqlite3'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = create_db_engine(url, synchronous="OFF") if request.param == "sqlite" else create_db_engine(url)
    migrate(engine)
    yield SimpleNamespace(engine=engine, index_root=root / "indexes")
    engine.dispose()


def _vector(i: int) -> list[float]:
    return [float(x) for x in np.random.default_rng(i).standard_normal(DIM)]


def _docs(pairs: list[tuple[int, dict[str, Any]]]) -> list[SimpleNamespace]:
    return [SimpleNamespace(id=f"d{i:02d}", text=None, vector=_vector(i), metadata=md) for i, md in pairs]


async def _all_pages(services: Services, name: str, **query: Any) -> list[str]:
    found: list[str] = []
    cursor = None
    while True:
        page = await services.documents.find(name, limit=3, cursor=cursor, include=("metadata",), **query)
        found += [doc.id for doc in page.documents]
        cursor = page.next_cursor
        if cursor is None:
            return found


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    initial=st.lists(METADATA, min_size=3, max_size=20),
    replaced=st.lists(st.tuples(st.integers(0, 24), METADATA), max_size=5),
    deleted=st.lists(st.integers(0, 24), max_size=5),
    data=st.data(),
)
def test_filters_agree_with_the_reference(
    database: SimpleNamespace,
    initial: list[dict[str, Any]],
    replaced: list[tuple[int, dict[str, Any]]],
    deleted: list[int],
    data: st.DataObject,
) -> None:
    name = f"f{next(names)}"
    live = dict(enumerate(initial))
    live.update(dict(replaced))
    for i in deleted:
        live.pop(i, None)

    async def write() -> None:
        services = build_services(database.engine, database.index_root)
        try:
            await services.collections.create(name=name, embedding_model=None, dimension=DIM, metric="l2")
            await services.documents.upsert(name, _docs(list(enumerate(initial))))
            if replaced:
                await services.documents.upsert(name, _docs(list(dict(replaced).items())))
            await services.documents.delete(name, ids=[f"d{i:02d}" for i in deleted])
        finally:
            services.close()

    asyncio.run(write())
    services = build_services(database.engine, database.index_root)  # reopened: the mirror comes from the rows
    try:
        for where in data.draw(st.lists(filters(list(live.values())), min_size=1, max_size=4), label="filters"):
            passing = sorted(f"d{i:02d}" for i, md in live.items() if matches(where, md))
            ids = data.draw(st.lists(st.sampled_from([f"d{i:02d}" for i in range(26)]), max_size=8), label="ids")
            asyncio.run(_check(services, name, where, passing, ids))
        doomed = data.draw(filters(list(live.values())), label="delete")
        passing = sorted(f"d{i:02d}" for i, md in live.items() if matches(doomed, md))
        if not doomed:  # {} deletes nothing (a 422); a filter must say what goes
            passing = []
        elif passing:
            assert asyncio.run(services.documents.delete(name, filter=doomed))[0] == len(passing)
            assert asyncio.run(services.documents.count(name, filter=doomed)) == 0
        assert asyncio.run(services.documents.count(name)) == len(live) - len(passing)
        asyncio.run(services.collections.delete(name))
    finally:
        services.close()


async def _check(services: Services, name: str, where: dict[str, Any], passing: list[str], ids: list[str]) -> None:
    assert await services.documents.count(name, filter=where) == len(passing), where
    assert await _all_pages(services, name, filter=where) == passing, where
    among = sorted(set(passing) & set(ids))
    assert await _all_pages(services, name, filter=where, ids=ids) == among, where
    if where:
        assert (await services.documents.delete(name, filter=where, dry_run=True))[0] == len(passing)
    else:  # an empty filter never deletes: a 422, even as a dry run
        with pytest.raises(InvalidRequest):
            await services.documents.delete(name, filter=where, dry_run=True)
    assert (await services.documents.delete(name, ids=ids, filter=where, dry_run=True))[0] == len(among)
    query = np.random.default_rng(len(passing)).standard_normal(DIM).astype(np.float32)
    result = await services.search.search(name, vector=query.tolist(), top_k=5, filter=where, include=())
    if passing:
        vectors = np.stack([_vector(int(doc_id[1:])) for doc_id in passing]).astype(np.float32)
        order = np.argsort(brute_distances("l2", query, vectors), kind="stable")[:5]
        assert [hit.id for hit in result.hits] == [passing[i] for i in order], where
    else:
        assert result.hits == []

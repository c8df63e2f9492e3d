"""Every `[limits]` setting through the services: a 413 or 422 whose detail names the field, the limit and the
setting, nothing written, nothing embedded; exactly at the limit, the request goes through."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Coroutine, Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from akidb.collections.search import Fusion, max_candidates
from akidb.config import EmbeddingSettings, LimitsSettings
from akidb.embedding.registry import default_registry
from akidb.embedding.router import EmbeddingRouter, EmbedResult
from akidb.embedding.spec import InputKind
from akidb.errors import AkidbError
from akidb.storage.db import create_db_engine, migrate
from tests.services import Services, build_services

LIMITS = LimitsSettings(
    max_documents_per_upsert=5,
    max_inputs_per_embed=4,
    max_text_chars=50,
    max_top_k=20,
    max_ids_per_request=3,
    max_filter_depth=3,
    max_filter_nodes=6,
    max_filter_values=5,
)
SEEDED = 4


class Spy:
    """Counts the router's embed calls (every path to the provider goes through it)."""

    def __init__(self, router: EmbeddingRouter) -> None:
        self.calls = 0
        self.texts = 0
        self._embed = router.embed

    async def __call__(self, model_id: str, texts: Sequence[str], kind: InputKind, **options: Any) -> EmbedResult:
        self.calls += 1
        self.texts += len(texts)
        return await self._embed(model_id, texts, kind, **options)


class World(SimpleNamespace):
    services: Services
    spy: Spy

    def rows(self) -> int:
        """Documents in the database and in the open collection; both must agree."""
        handle = self.services.open_collections.get("docs")
        in_db = self.services.store.count_documents(handle.id)
        assert handle.live_count == in_db
        return in_db


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def doc(i: int, text: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(id=f"d{i}", text=text or f"document number {i}", vector=None, metadata={"n": i})


@pytest.fixture
def world(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}", synchronous="OFF")
    migrate(engine)
    services = build_services(engine, tmp_path / "indexes", limits=LIMITS)
    run(services.collections.create(name="docs"))
    run(services.documents.upsert("docs", [doc(i) for i in range(SEEDED)]))
    spy = Spy(services.router)
    monkeypatch.setattr(services.router, "embed", spy)
    state = World(services=services, spy=spy)
    assert state.rows() == SEEDED
    yield state
    services.close()
    engine.dispose()


def refused(coro: Coroutine[Any, Any, Any], *, status: int, field: str, limit: int, setting: str) -> str:
    """The request fails with `status`; its detail names the field, the limit and `limits.<setting>`."""
    with pytest.raises(AkidbError) as info:
        run(coro)
    error = info.value
    assert error.status_code == status, error.detail
    assert error.detail.startswith(field), error.detail
    assert re.search(rf"(?<![\d,]){limit}(?!\d|,\d)", error.detail), error.detail
    assert f"limits.{setting}" in error.detail, error.detail
    assert error.extra == {"field": field, "limit": limit}
    return error.detail


# --- documents -----------------------------------------------------------------------------------------


def test_too_many_documents_in_one_upsert(world: World) -> None:
    detail = refused(
        world.services.documents.upsert("docs", [doc(10 + i) for i in range(6)]),
        status=413,
        field="documents",
        limit=5,
        setting="max_documents_per_upsert",
    )
    assert detail == "documents: 6 documents in one upsert, the limit is 5 (limits.max_documents_per_upsert)"
    assert world.rows() == SEEDED
    assert world.spy.calls == 0

    result = run(world.services.documents.upsert("docs", [doc(10 + i) for i in range(5)]))
    assert result.inserted == 5
    assert world.rows() == SEEDED + 5
    assert world.spy.calls == 1


def test_document_text_over_the_character_limit(world: World) -> None:
    documents = [doc(10), doc(11), doc(12, "x" * 51)]
    refused(
        world.services.documents.upsert("docs", documents),
        status=413,
        field="documents[2].text",
        limit=50,
        setting="max_text_chars",
    )
    assert world.rows() == SEEDED
    assert world.spy.calls == 0
    # The same request with that text exactly at the limit goes through, every text embedded.
    documents[2] = doc(12, "x" * 50)
    assert run(world.services.documents.upsert("docs", documents)).inserted == 3
    assert world.rows() == SEEDED + 3
    assert world.spy.texts == 3


def test_an_update_over_the_limit_leaves_the_old_text(world: World) -> None:
    refused(
        world.services.documents.upsert("docs", [doc(0, "y" * 51)]),
        status=413,
        field="documents[0].text",
        limit=50,
        setting="max_text_chars",
    )
    page = run(world.services.documents.find("docs", ids=["d0"]))
    assert [row.text for row in page.documents] == ["document number 0"]


def test_too_many_ids_to_get(world: World) -> None:
    refused(
        world.services.documents.find("docs", ids=["d0", "d1", "d2", "d3"]),
        status=413,
        field="ids",
        limit=3,
        setting="max_ids_per_request",
    )
    page = run(world.services.documents.find("docs", ids=["d0", "d1", "d2"]))
    assert [row.id for row in page.documents] == ["d0", "d1", "d2"]


def test_too_many_ids_to_delete(world: World) -> None:
    refused(
        world.services.documents.delete("docs", ids=["d0", "d1", "d2", "d3"]),
        status=413,
        field="ids",
        limit=3,
        setting="max_ids_per_request",
    )
    assert world.rows() == SEEDED
    assert run(world.services.documents.delete("docs", ids=["d0", "d1", "d2"]))[0] == 3
    assert world.rows() == SEEDED - 3


# --- search --------------------------------------------------------------------------------------------


def test_top_k_over_the_limit(world: World) -> None:
    detail = refused(
        world.services.search.search("docs", query="document", top_k=21),
        status=422,
        field="top_k",
        limit=20,
        setting="max_top_k",
    )
    assert detail.startswith("top_k must be between 1 and 20, got 21")
    assert world.spy.calls == 0
    assert len(run(world.services.search.search("docs", query="document", top_k=20)).hits) == SEEDED
    assert world.spy.calls == 1


def test_query_over_the_character_limit(world: World) -> None:
    for mode in ("dense", "keyword", "hybrid"):
        refused(
            world.services.search.search("docs", query="q" * 51, mode=mode),
            status=413,
            field="query",
            limit=50,
            setting="max_text_chars",
        )
    assert world.spy.calls == 0
    assert run(world.services.search.search("docs", query="q" * 50)).model is not None
    assert world.spy.calls == 1


def test_fusion_candidates_are_bounded_by_max_top_k(world: World) -> None:
    limit = max_candidates(LIMITS.max_top_k)
    assert limit <= 10 * LIMITS.max_top_k
    assert limit == 200
    refused(
        world.services.search.search("docs", query="document", mode="hybrid", fusion=Fusion(candidates=limit + 1)),
        status=422,
        field="fusion.candidates",
        limit=limit,
        setting="max_top_k",
    )
    assert world.spy.calls == 0
    result = run(world.services.search.search("docs", query="document", mode="hybrid", fusion=Fusion(candidates=limit)))
    assert len(result.hits) == SEEDED


# --- filters -------------------------------------------------------------------------------------------


def _nodes(count: int) -> dict[str, Any]:
    """A filter of `count` nodes: count - 1 conditions under one $and."""
    return {"$and": [{f"k{i}": i} for i in range(count - 1)]}


def _deep(levels: int) -> dict[str, Any]:
    raw: dict[str, Any] = {"n": 1}
    for _ in range(levels - 1):
        raw = {"$not": raw}
    return raw


def _values(count: int) -> dict[str, Any]:
    return {"n": {"$in": list(range(count))}}


FILTER_LIMITS = [
    pytest.param(_nodes, 6, "max_filter_nodes", id="nodes"),
    pytest.param(_deep, 3, "max_filter_depth", id="depth"),
    pytest.param(_values, 5, "max_filter_values", id="values"),
]


@pytest.mark.parametrize(("make", "limit", "setting"), FILTER_LIMITS)
def test_filter_limits_in_every_service(make: Any, limit: int, setting: str, world: World) -> None:
    too_big, at_limit = make(limit + 1), make(limit)
    services = world.services
    for call in (
        lambda f: services.search.search("docs", query="document", filter=f),
        lambda f: services.search.search("docs", query="document", mode="keyword", filter=f),
        lambda f: services.documents.find("docs", filter=f),
        lambda f: services.documents.count("docs", filter=f),
        lambda f: services.documents.delete("docs", filter=f),
    ):
        refused(call(too_big), status=422, field="filter", limit=limit, setting=setting)
    assert world.rows() == SEEDED
    assert world.spy.calls == 0
    # Exactly at the limit: every service takes it.
    run(services.search.search("docs", query="document", filter=at_limit))
    run(services.documents.find("docs", filter=at_limit))
    run(services.documents.count("docs", filter=at_limit))
    run(services.documents.delete("docs", filter=at_limit, dry_run=True))
    assert world.spy.calls == 1


def test_filter_values_are_counted_over_the_whole_filter(world: World) -> None:
    raw = {"n": {"$in": [0, 1, 2]}, "m": {"$nin": [0, 1, 2]}}
    refused(
        world.services.documents.delete("docs", filter=raw),
        status=422,
        field="filter",
        limit=5,
        setting="max_filter_values",
    )
    assert world.rows() == SEEDED


# --- the embed endpoints' rules (EmbeddingRouter.embed_texts) ------------------------------------------


@pytest.mark.parametrize("field", ["inputs", "input"])
def test_too_many_inputs_to_embed(field: str, world: World) -> None:
    router = world.services.router
    refused(
        router.embed_texts(None, ["a", "b", "c", "d", "e"], "document", field=field),
        status=413,
        field=field,
        limit=4,
        setting="max_inputs_per_embed",
    )
    assert world.spy.calls == 0
    result = run(router.embed_texts(None, ["a", "b", "c", "d"], "document", field=field))
    assert result.embeddings.vectors.shape[0] == 4
    assert world.spy.calls == 1


def test_embed_input_over_the_character_limit(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    router = world.services.router
    get_many = router.cache.get_many
    asked: list[int] = []

    def counting_get_many(keys: list[bytes]) -> Any:
        asked.append(len(keys))
        return get_many(keys)

    monkeypatch.setattr(router.cache, "get_many", counting_get_many)  # the cache is not even asked
    refused(
        router.embed_texts(None, ["fine", "z" * 51], "query"),
        status=413,
        field="inputs[1]",
        limit=50,
        setting="max_text_chars",
    )
    assert world.spy.calls == 0
    assert asked == []
    run(router.embed_texts(None, ["fine", "z" * 50], "query"))
    assert world.spy.calls == 1
    assert asked == [2]


def test_the_router_defaults_to_the_default_limits() -> None:
    router = EmbeddingRouter(EmbeddingSettings(provider="mock"), default_registry())
    try:
        assert router.limits == LimitsSettings()
        default = LimitsSettings().max_text_chars
        assert default == 100_000
        refused(
            router.embed_texts(None, ["w" * (default + 1)], "document"),
            status=413,
            field="inputs[0]",
            limit=default,
            setting="max_text_chars",
        )
        assert not router.models.is_loaded(router.settings.model)
        refused(
            router.embed_texts(None, ["w"] * 2049, "document"),
            status=413,
            field="inputs",
            limit=2048,
            setting="max_inputs_per_embed",
        )
        assert not router.models.is_loaded(router.settings.model)
    finally:
        router.close()

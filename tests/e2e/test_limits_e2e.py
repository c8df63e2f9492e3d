"""The `[limits]` settings over HTTP, on one real server with small limits and the mock provider: each limit
answers 413 or 422 with the JSON error body naming the field, the limit and its setting, writes nothing and
embeds nothing (the embedding cache's hit and miss counters on /metrics stay put); exactly at a limit the
request goes through."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import AkidbServer

pytestmark = pytest.mark.e2e

MODEL = "all-MiniLM-L6-v2"
LIMITS = {
    "max_body_bytes": 200_000,
    "max_documents_per_upsert": 5,
    "max_inputs_per_embed": 4,
    "max_text_chars": 500,
    "max_top_k": 20,
    "max_ids_per_request": 10,
    "max_filter_depth": 4,
    "max_filter_nodes": 8,
    "max_filter_values": 6,
}
CONFIG = f'[embedding]\nprovider = "mock"\nmodel = "{MODEL}"\n\n[limits]\n' + "".join(
    f"{key} = {value}\n" for key, value in LIMITS.items()
)
SEEDED = 3
COUNT = "/api/v1/collections/lim/count"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AkidbServer]:
    server = AkidbServer(tmp_path_factory.mktemp("akidb-limits"), config=CONFIG)
    try:
        server.start()
        client = server.client
        response = client.post("/api/v1/collections", json={"name": "lim"})
        assert response.status_code == 201, response.text
        documents = [{"id": f"d{i}", "text": f"seeded document {i}", "metadata": {"n": i}} for i in range(SEEDED)]
        response = client.post("/api/v1/collections/lim/upsert", json={"documents": documents})
        assert response.status_code == 200, response.text
        yield server
    finally:
        server.close()


@pytest.fixture
def client(server: AkidbServer) -> httpx.Client:
    return server.client


def count(client: httpx.Client) -> int:
    response = client.post(COUNT, json={})
    assert response.status_code == 200, response.text
    return int(response.json()["count"])


def texts_asked(client: httpx.Client) -> float:
    """Texts the embedding cache was asked for (hits + misses), all models: every embedding passes there."""
    text = client.get("/metrics").text
    total = 0.0
    for name in ("akidb_embed_cache_hits_total", "akidb_embed_cache_misses_total"):
        for match in re.finditer(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE):
            total += float(match.group(1))
    return total


@pytest.fixture
def untouched(client: httpx.Client) -> Iterator[None]:
    """The test's refused requests write nothing and embed nothing (checked after the test's body)."""
    rows, asked = count(client), texts_asked(client)
    yield
    assert count(client) == rows
    assert texts_asked(client) == asked


def refused(response: httpx.Response, *, status: int, field: str, setting: str) -> dict[str, Any]:
    """The JSON error body names the field, the limit's value and its setting."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"status_code", "detail", "extra"}
    assert body["status_code"] == status
    limit = LIMITS[setting]
    assert body["detail"].startswith(field), body["detail"]
    assert re.search(rf"(?<![\d,]){limit}(?!\d|,\d)", body["detail"]), body["detail"]
    assert f"limits.{setting}" in body["detail"], body["detail"]
    assert body["extra"]["field"] == field
    assert body["extra"]["limit"] == limit
    return dict(body)


def _docs(first: int, n: int, chars: int = 20) -> list[dict[str, Any]]:
    """`n` documents n<first>..., each text exactly `chars` characters."""
    return [
        {"id": f"n{i}", "text": f"{i:04d} " + "t" * (chars - 5), "metadata": {"n": i}} for i in range(first, first + n)
    ]


# --- refused, nothing written or embedded ----------------------------------------------------------------


@pytest.mark.usefixtures("untouched")
def test_too_many_documents(client: httpx.Client) -> None:
    response = client.post("/api/v1/collections/lim/upsert", json={"documents": _docs(100, 6)})
    body = refused(response, status=413, field="documents", setting="max_documents_per_upsert")
    assert body["detail"] == "documents: 6 documents in one upsert, the limit is 5 (limits.max_documents_per_upsert)"


@pytest.mark.usefixtures("untouched")
def test_document_text_too_long(client: httpx.Client) -> None:
    documents = _docs(200, 2)
    documents[1]["text"] = "x" * 501
    response = client.post("/api/v1/collections/lim/upsert", json={"documents": documents})
    refused(response, status=413, field="documents[1].text", setting="max_text_chars")


@pytest.mark.usefixtures("untouched")
def test_too_many_inputs_to_embed(client: httpx.Client) -> None:
    response = client.post("/api/v1/embed", json={"inputs": ["a", "b", "c", "d", "e"]})
    refused(response, status=413, field="inputs", setting="max_inputs_per_embed")
    response = client.post("/v1/embeddings", json={"input": ["a", "b", "c", "d", "e"]})
    refused(response, status=413, field="input", setting="max_inputs_per_embed")


@pytest.mark.usefixtures("untouched")
def test_embed_input_too_long(client: httpx.Client) -> None:
    response = client.post("/api/v1/embed", json={"inputs": ["fine", "y" * 501]})
    refused(response, status=413, field="inputs[1]", setting="max_text_chars")
    response = client.post("/v1/embeddings", json={"input": "y" * 501})
    refused(response, status=413, field="input[0]", setting="max_text_chars")


@pytest.mark.usefixtures("untouched")
def test_search_limits(client: httpx.Client) -> None:
    search = "/api/v1/collections/lim/search"
    body = refused(
        client.post(search, json={"query": "seeded", "top_k": 21}), status=422, field="top_k", setting="max_top_k"
    )
    assert body["detail"].startswith("top_k must be between 1 and 20, got 21")
    refused(client.post(search, json={"query": "q" * 501}), status=413, field="query", setting="max_text_chars")
    response = client.post(search, json={"query": "seeded", "mode": "hybrid", "fusion": {"candidates": 1_000_000}})
    assert response.status_code == 422, response.text
    assert response.json()["extra"]["field"] == "fusion.candidates"
    assert "limits.max_top_k" in response.json()["detail"]


@pytest.mark.usefixtures("untouched")
def test_too_many_ids(client: httpx.Client) -> None:
    ids = [f"d{i}" for i in range(11)]
    response = client.post("/api/v1/collections/lim/get", json={"ids": ids})
    refused(response, status=413, field="ids", setting="max_ids_per_request")
    response = client.post("/api/v1/collections/lim/delete", json={"ids": ids})
    refused(response, status=413, field="ids", setting="max_ids_per_request")


FILTERS = [
    pytest.param({"$or": [{"n": i} for i in range(8)]}, "max_filter_nodes", id="nodes"),
    pytest.param({"$not": {"$not": {"$not": {"$not": {"n": 1}}}}}, "max_filter_depth", id="depth"),
    pytest.param({"n": {"$in": list(range(7))}}, "max_filter_values", id="values"),
]


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize(("raw", "setting"), FILTERS)
def test_filter_limits(client: httpx.Client, raw: dict[str, Any], setting: str) -> None:
    for path, body in (
        ("search", {"query": "seeded", "filter": raw}),
        ("count", {"filter": raw}),
        ("get", {"filter": raw}),
        ("delete", {"filter": raw}),
    ):
        response = client.post(f"/api/v1/collections/lim/{path}", json=body)
        refused(response, status=422, field="filter", setting=setting)


@pytest.mark.usefixtures("untouched")
def test_body_over_max_body_bytes(client: httpx.Client) -> None:
    """The gateway's part: a body over limits.max_body_bytes is a 413 with the JSON error body."""
    limit = LIMITS["max_body_bytes"]
    documents = [{"id": "big", "text": "b" * (limit + 1)}]
    response = client.post("/api/v1/collections/lim/upsert", json={"documents": documents})
    assert response.status_code == 413, response.text
    body = response.json()
    assert body["status_code"] == 413
    assert str(limit) in body["detail"], body["detail"]


# --- exactly at the limits -------------------------------------------------------------------------------


def test_exactly_at_the_limits_goes_through(client: httpx.Client) -> None:
    before, asked = count(client), texts_asked(client)
    response = client.post("/api/v1/collections/lim/upsert", json={"documents": _docs(300, 5, chars=500)})
    assert response.status_code == 200, response.text
    assert response.json()["inserted"] == 5
    assert count(client) == before + 5

    response = client.post("/api/v1/embed", json={"inputs": ["a", "b", "c", "z" * 500]})
    assert response.status_code == 200, response.text
    assert len(response.json()["embeddings"]) == 4
    response = client.post("/v1/embeddings", json={"input": ["a", "b", "c", "d"]})
    assert response.status_code == 200, response.text
    # The counters `untouched` reads do move when texts are embedded (5 documents, 4 + 4 inputs).
    assert texts_asked(client) == asked + 13

    filter_at_limits = {"$and": [{"n": {"$in": list(range(300, 306))}}, {"$not": {"$not": {"n": {"$gte": 300}}}}]}
    response = client.post(
        "/api/v1/collections/lim/search", json={"query": "q" * 500, "top_k": 20, "filter": filter_at_limits}
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 5
    response = client.post(
        "/api/v1/collections/lim/search",
        json={"query": "seeded", "mode": "hybrid", "top_k": 20, "fusion": {"candidates": 200}},
    )
    assert response.status_code == 200, response.text

    ids = [f"n{i}" for i in range(300, 305)] + [f"missing{i}" for i in range(5)]
    response = client.post("/api/v1/collections/lim/get", json={"ids": ids})
    assert response.status_code == 200, response.text
    assert len(response.json()["documents"]) == 5
    response = client.post("/api/v1/collections/lim/delete", json={"ids": ids})
    assert response.status_code == 200, response.text
    assert response.json()["deleted"] == 5
    assert count(client) == before

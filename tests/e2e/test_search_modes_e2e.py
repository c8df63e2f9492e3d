"""Filters, keyword and hybrid search on a real server with the real MiniLM, over SciFact abstracts.

Queries are chosen by what each side really does on this corpus: rare terms (codes, names) that the
keyword side ranks first and the dense side misses, and paraphrases that share no word with their
abstract, which only the dense side finds. Hybrid search must find both kinds.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import pytest

from tests.e2e.conftest import AkidbServer, shared_data_dir

pytestmark = pytest.mark.e2e

DOCS = 300
WORD = re.compile(r"[a-z0-9]+")
# Paraphrases of SciFact abstracts in other words (checked below: the keyword side must not find them).
PARAPHRASES = {
    "103007": "how tall and how heavy youngsters grow in britain, plotted by birthday",
    "120626": "why being overweight stops the body responding to the sugar-regulating signal",
    "70490": "making the numbers behind a clinical exam outcome easier for doctors",
    "275294": "sunshine on our outer layer and the making of calciferol",
    "308862": "how many weeks to block male sex steroids when treating a gland tumour",
    "79447": "tiny vessel behaviour in belly lard of very heavy people",
}
# Each side ranks this deep before fusion. The default (100) is 2% of SciFact's 5,183 abstracts; over the
# 300 loaded here it would be a third of the corpus, where every document that both sides rank in the
# middle outscores one side's first (1/61 < 2/(60 + 61)). 20 keeps the proportion of the whole corpus.
CANDIDATES = 20


@pytest.fixture(scope="module")
def server(akidb_server: AkidbServer) -> AkidbServer:
    return akidb_server


@pytest.fixture(scope="module")
def scifact(server: AkidbServer) -> dict[str, str]:
    """The first DOCS abstracts (title + text) upserted by text with metadata; id -> text."""
    with (shared_data_dir() / "scifact-corpus.jsonl").open(encoding="utf-8") as lines:
        rows = [json.loads(line) for _, line in zip(range(DOCS), lines, strict=False)]
    client = server.client
    assert client.post("/api/v1/collections", json={"name": "sci"}).status_code == 201
    texts = {row["_id"]: f"{row['title']}. {row['text']}" for row in rows}
    for start in range(0, len(rows), 100):
        documents = [
            {"id": row["_id"], "text": texts[row["_id"]], "metadata": {"n": i, "even": i % 2 == 0}}
            for i, row in enumerate(rows[start : start + 100], start=start)
        ]
        response = client.post("/api/v1/collections/sci/upsert", json={"documents": documents})
        assert response.status_code == 200, response.text
    return texts


def _search(server: AkidbServer, **body: Any) -> list[dict[str, Any]]:
    response = server.client.post("/api/v1/collections/sci/search", json={"include": [], **body})
    assert response.status_code == 200, response.text
    return list(response.json()["results"])


def _ids(hits: list[dict[str, Any]]) -> list[str]:
    return [hit["id"] for hit in hits]


def test_hybrid_finds_what_only_one_side_finds(server: AkidbServer, scifact: dict[str, str]) -> None:
    # Keyword-only: words that occur in exactly one abstract, which the keyword side ranks first and the
    # dense side does not have in its top 10.
    seen = Counter(word for text in scifact.values() for word in set(WORD.findall(text.lower())))
    rare = sorted(
        (word, doc_id)
        for doc_id, text in scifact.items()
        for word in set(WORD.findall(text.lower()))
        if seen[word] == 1 and len(word) >= 5 and any(ch.isdigit() for ch in word) and not word.isdigit()
    )[:40]
    keyword_only = []
    for word, doc_id in rare:
        if _ids(_search(server, query=word, mode="keyword", top_k=1)) != [doc_id]:
            continue
        if doc_id not in _ids(_search(server, query=word, top_k=10)):
            keyword_only.append((word, doc_id))
    assert len(keyword_only) >= 3, f"too few keyword-only queries among {rare}"
    # Dense-only: paraphrases whose abstract the dense side ranks in its top 10 and the keyword side does not.
    dense_only = [
        (query, doc_id)
        for doc_id, query in PARAPHRASES.items()
        if doc_id in scifact
        and doc_id in _ids(_search(server, query=query, top_k=10))
        and doc_id not in _ids(_search(server, query=query, mode="keyword", top_k=10))
    ]
    assert len(dense_only) >= 2, f"too few dense-only paraphrases: {dense_only}"
    for query, doc_id in keyword_only + dense_only:
        hits = _search(server, query=query, mode="hybrid", top_k=10, fusion={"candidates": CANDIDATES})
        assert doc_id in _ids(hits), f"hybrid missed {doc_id} for {query!r}"
        scores = [hit["score"] for hit in hits]
        assert scores == sorted(scores, reverse=True)
        # The fused score is at most the sum of both sides' best reciprocal ranks: 2 / (60 + 1).
        assert 0 < scores[0] <= 2 / 61 + 1e-9


def test_every_mode_honours_the_filter(server: AkidbServer, scifact: dict[str, str]) -> None:
    for mode in ("dense", "keyword", "hybrid"):
        hits = _search(server, query="stem cells", mode=mode, top_k=20, filter={"even": True}, include=["metadata"])
        assert hits, mode
        assert all(hit["metadata"]["even"] is True for hit in hits), mode
        if mode == "keyword":
            assert all(hit["distance"] is None for hit in hits)
    count = server.client.post("/api/v1/collections/sci/count", json={"filter": {"n": {"$lt": 50}}}).json()
    assert count == {"count": 50}
    page = server.client.post(
        "/api/v1/collections/sci/get", json={"filter": {"n": {"$gte": 290}}, "limit": 4, "include": ["metadata"]}
    ).json()
    assert [doc["id"] for doc in page["documents"]] == sorted(page_ids := [d["id"] for d in page["documents"]])
    assert len(page_ids) == 4
    assert page["next_cursor"] is not None
    rest = server.client.post(
        "/api/v1/collections/sci/get", json={"filter": {"n": {"$gte": 290}}, "cursor": page["next_cursor"]}
    ).json()
    assert len(rest["documents"]) == 6
    assert rest["next_cursor"] is None
    assert page_ids[-1] < rest["documents"][0]["id"]


@pytest.mark.parametrize(
    ("where", "path"),
    [
        ([1, 2], "filter"),
        ({"n": {"$foo": 1}}, "filter.n.$foo"),
        ({"$or": [{"even": True}, {"n": {"$in": 3}}]}, "filter.$or[1].n.$in"),
        ({"$and": []}, "filter.$and"),
        ({"$not": [1]}, "filter.$not"),
        ({"n": {"$gt": True}}, "filter.n.$gt"),
        ({"n": {"$exists": "yes"}}, "filter.n.$exists"),
        ({"tags": {"$contains": [1]}}, "filter.tags.$contains"),
        ({"a..b": 1}, "filter.a..b"),
        ({"$gt": 1}, "filter.$gt"),
    ],
)
def test_a_malformed_filter_is_422_naming_its_path_and_deletes_nothing(
    server: AkidbServer, scifact: dict[str, str], where: Any, path: str
) -> None:
    client = server.client
    for route, body in (
        ("count", {"filter": where}),
        ("get", {"filter": where}),
        ("search", {"query": "cells", "filter": where}),
        ("delete", {"filter": where}),
    ):
        response = client.post(f"/api/v1/collections/sci/{route}", json=body)
        assert response.status_code == 422, (route, response.text)
        assert response.json()["detail"].startswith(f"{path}:"), (route, response.json()["detail"])
    assert client.post("/api/v1/collections/sci/count", json={}).json() == {"count": DOCS}


def test_delete_by_filter_dry_run_then_for_real(server: AkidbServer, scifact: dict[str, str]) -> None:
    client = server.client
    assert client.post("/api/v1/collections/sci/delete", json={}).status_code == 422
    assert client.post("/api/v1/collections/sci/delete", json={"filter": {}}).status_code == 422
    keyword_with_vector = client.post(
        "/api/v1/collections/sci/search", json={"query": "cells", "mode": "keyword", "vector": [0.0] * 384}
    )
    assert keyword_with_vector.status_code == 422
    assert keyword_with_vector.json()["extra"]["field"] == "vector"
    where = {"$and": [{"n": {"$gte": 280}}, {"even": False}]}
    dry = client.post("/api/v1/collections/sci/delete", json={"filter": where, "dry_run": True}).json()
    assert dry == {"deleted": 10, "dry_run": True, "seq": dry["seq"]}
    assert client.post("/api/v1/collections/sci/count", json={}).json() == {"count": DOCS}
    gone = client.post("/api/v1/collections/sci/delete", json={"filter": where}).json()
    # One seq per deleted document, after what a dry run changes nothing of.
    assert gone == {"deleted": 10, "dry_run": False, "seq": dry["seq"] + 10}
    assert client.post("/api/v1/collections/sci/count", json={"filter": where}).json() == {"count": 0}
    assert client.post("/api/v1/collections/sci/count", json={}).json() == {"count": DOCS - 10}
    # Put them back for the other tests.
    with (shared_data_dir() / "scifact-corpus.jsonl").open(encoding="utf-8") as lines:
        rows = [json.loads(line) for _, line in zip(range(DOCS), lines, strict=False)]
    back = [
        {"id": row["_id"], "text": scifact[row["_id"]], "metadata": {"n": i, "even": False}}
        for i, row in enumerate(rows)
        if i >= 280 and i % 2 == 1
    ]
    assert client.post("/api/v1/collections/sci/upsert", json={"documents": back}).json()["inserted"] == 10


def test_kill9_after_upsert_then_keyword_search_finds_it(server: AkidbServer, scifact: dict[str, str]) -> None:
    documents = [
        {"id": "k1", "text": "Zorblaxine inhibits the quuxase enzyme in frobnicated hepatocytes"},
        {"id": "k2", "text": "Quuxase knockout mice live long and prosper"},
    ]
    response = server.client.post("/api/v1/collections/sci/upsert", json={"documents": documents})
    assert response.status_code == 200
    assert server.kill9() == -9
    server.start()
    assert _ids(_search(server, query="zorblaxine", mode="keyword")) == ["k1"]
    assert sorted(_ids(_search(server, query="quuxase", mode="keyword"))) == ["k1", "k2"]
    assert server.client.post("/api/v1/collections/sci/delete", json={"ids": ["k2"]}).json()["deleted"] == 1
    assert server.kill9() == -9
    server.start()
    assert _ids(_search(server, query="quuxase", mode="keyword")) == ["k1"]  # a deleted document never comes back

"""End-to-end: a real `akidb serve` process, the real all-MiniLM-L6-v2 model, HTTP only (../shared/API.md).

One server per module (start-up and the model load cost seconds); every test makes its own collection
except those about the 1,000 fortunes, which share one loaded once. The restart and crash tests come last
because they stop the shared server, and they start it again on the same data dir.
"""

from __future__ import annotations

import math
import random
import signal
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from .conftest import AkidbServer, fortunes

pytestmark = pytest.mark.e2e

MODEL = "all-MiniLM-L6-v2"
MODEL_DIMENSION = 384
FORTUNES = "fortunes"
LOADED = 1000
BATCH = 100

# Hand-written rewordings of distinctive fortunes among the first 1,000; each must find its fortune first.
PARAPHRASES = {
    # "I put contact lenses in my dog's eyes. They had little pictures of cats on them. Then I took one
    # out and he ran around in circles. -- Steven Wright"
    "d00077": "I fitted my dog with contacts that had cat images printed on them, then removed one lens "
    "and he kept spinning in loops.",
    # "AMAZING BUT TRUE ... There is so much sand in Northern Africa that if it were spread out it would
    # completely cover the Sahara Desert."
    "d00041": "North Africa holds so much sand that, if you spread it all around, it would blanket the whole Sahara.",
    # Lady Astor: "Winston, if you were my husband, I'd put poison in your coffee." Churchill: "Nancy,
    # if you were my wife, I'd drink it."
    "d00310": "She told him she would poison his coffee if he were her husband; he answered that if she were "
    "his wife he would gladly drink it.",
    # "Croll's Query: If tin whistles are made of tin, what are foghorns made of?"
    "d00329": "Whistles made of tin are tin whistles, so what material do they use for foghorns?",
    # "It is illegal to drive more than two thousand sheep down Hollywood Boulevard at one time."
    "d00326": "Herding over two thousand sheep along Hollywood Boulevard at once is against the law.",
    # "The District of Columbia has a law forbidding you to exert pressure on a balloon and thereby cause
    # a whistling sound on the streets."
    "d00087": "In Washington DC you may not squeeze a balloon until it squeals on a public street.",
    # "Don't go around saying the world owes you a living. The world owes you nothing. It was here first."
    "d00284": "Stop claiming that the world owes you something; it owes you nothing, since it existed before you.",
    # "The first half of our lives is ruined by our parents and the second half by our children."
    "d00292": "Our parents wreck the first part of our lives and our kids wreck the rest.",
}


# --- helpers ---------------------------------------------------------------------------------------------


def as_document(line: dict[str, Any]) -> dict[str, Any]:
    return {"id": line["id"], "text": line["text"], "metadata": {"source": line["source"]}}


def unit_vector(seed: int | str, dimension: int) -> list[float]:
    rng = random.Random(seed)
    values = [rng.gauss(0.0, 1.0) for _ in range(dimension)]
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def expect(response: httpx.Response, status: int) -> Any:
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url}: expected {status}, "
        f"got {response.status_code}: {response.text[:2000]}"
    )
    return response.json() if response.content else None


def expect_error(response: httpx.Response, status: int, *fragments: str) -> str:
    """The error has Litestar's shape and its detail names every fragment; returns the detail."""
    body = expect(response, status)
    assert body["status_code"] == status, body
    detail = body["detail"]
    assert isinstance(detail, str), body
    for fragment in fragments:
        assert fragment in detail, f"{fragment!r} is not in the detail {detail!r}"
    return detail


def document_count(api: httpx.Client, name: str) -> int:
    return int(expect(api.get(f"/api/v1/collections/{name}"), 200)["document_count"])


def create_collection(api: httpx.Client, name: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = expect(api.post("/api/v1/collections", json={"name": name, **fields}), 201)
    return body


def upsert(api: httpx.Client, name: str, documents: list[dict[str, Any]]) -> httpx.Response:
    return api.post(f"/api/v1/collections/{name}/upsert", json={"documents": documents})


def search(api: httpx.Client, name: str, **request: Any) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = expect(api.post(f"/api/v1/collections/{name}/search", json=request), 200)["results"]
    return results


def all_ids(api: httpx.Client, name: str, limit: int) -> tuple[list[str], int]:
    """Walk GET documents with next_cursor; returns the ids in page order and the number of pages."""
    ids: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        page = expect(api.get(f"/api/v1/collections/{name}/documents", params=params), 200)
        pages += 1
        assert len(page["documents"]) <= limit
        ids.extend(doc["id"] for doc in page["documents"])
        cursor = page["next_cursor"]
        if cursor is None:
            return ids, pages
        assert page["documents"], "a page with a next_cursor must not be empty"
        assert pages <= 10_000, "pagination does not end"


# --- the shared, loaded collection ---------------------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    created: dict[str, Any]
    responses: list[dict[str, Any]]
    lines: tuple[dict[str, Any], ...]

    @property
    def by_id(self) -> dict[str, dict[str, Any]]:
        return {line["id"]: line for line in self.lines}


@pytest.fixture(scope="module")
def server(akidb_server: AkidbServer) -> AkidbServer:
    return akidb_server


@pytest.fixture(scope="module")
def loaded(server: AkidbServer) -> Loaded:
    """The collection `fortunes` with the first 1,000 lines of fortunes-corpus.jsonl, sent as text, 100 a request."""
    lines = fortunes()[:LOADED]
    assert len(lines) == LOADED, "fortunes-corpus.jsonl has fewer than 1,000 lines"
    api = server.client
    created = create_collection(api, FORTUNES, metadata={"corpus": "fortunes"})
    responses = []
    for start in range(0, LOADED, BATCH):
        batch = [as_document(line) for line in lines[start : start + BATCH]]
        responses.append(expect(upsert(api, FORTUNES, batch), 200))
    return Loaded(created=created, responses=responses, lines=lines)


# --- operations ------------------------------------------------------------------------------------------


def test_health_live_and_ready(server: AkidbServer) -> None:
    api = server.client
    assert expect(api.get("/health/live"), 200)["status"] == "ok"
    assert expect(api.get("/health/ready"), 200)["status"] == "ready"


def test_metrics_are_prometheus_text(server: AkidbServer) -> None:
    api = server.client
    expect(api.get("/api/v1/collections"), 200)  # at least one counted request
    response = api.get("/metrics")
    assert response.status_code == 200, response.text[:500]
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    text = response.text
    assert "# HELP " in text
    assert "# TYPE " in text
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert samples, "no samples in /metrics"
    for line in samples:
        name_and_labels, _, value = line.rpartition(" ")
        assert name_and_labels, f"not a Prometheus sample line: {line!r}"
        float(value)  # every sample ends in a number
    assert any(line.startswith("akidb_") for line in samples), "no akidb_* metric in /metrics"


def test_schema_is_the_openapi_document(server: AkidbServer) -> None:
    response = server.client.get("/schema/openapi.json")
    body = expect(response, 200)
    assert "openapi" in body
    assert body["openapi"].startswith("3.")
    assert "/api/v1/collections/{name}/upsert" in body["paths"]
    plain = expect(server.client.get("/schema"), 200)
    assert plain["openapi"] == body["openapi"]
    # The document tells clients what the server enforces: closed request bodies and the error statuses.
    schemas = body["components"]["schemas"]
    assert schemas["UpsertRequest"]["additionalProperties"] is False
    assert schemas["DocumentIn"]["additionalProperties"] is False
    upsert_responses = body["paths"]["/api/v1/collections/{name}/upsert"]["post"]["responses"]
    assert {"200", "400", "404", "413", "422"} <= set(upsert_responses)


def test_models_list_the_loaded_default(server: AkidbServer) -> None:
    body = expect(server.client.get("/api/v1/models"), 200)
    assert body["default_model"] == MODEL
    default = next(model for model in body["models"] if model["id"] == MODEL)
    assert default["dimension"] == MODEL_DIMENSION
    assert default["is_default"] is True
    assert default["loaded"] is True
    expect_error(server.client.get("/api/v1/models/no-such-model"), 404)


# --- the 1,000 fortunes ----------------------------------------------------------------------------------


def test_upsert_1000_fortunes_as_text(server: AkidbServer, loaded: Loaded) -> None:
    assert loaded.created["name"] == FORTUNES
    assert loaded.created["embedding_model"] == MODEL
    assert loaded.created["dimension"] == MODEL_DIMENSION
    assert loaded.created["metric"] == "cosine"
    assert loaded.created["document_count"] == 0
    assert len(loaded.responses) == LOADED // BATCH
    for number, response in enumerate(loaded.responses):
        expected_ids = [line["id"] for line in loaded.lines[number * BATCH : (number + 1) * BATCH]]
        assert response["ids"] == expected_ids
        assert (response["inserted"], response["updated"]) == (BATCH, 0)
        assert response["embeddings_generated"] is True
        assert response["model"] == MODEL
        assert response["usage"]["total_tokens"] > 0
    api = server.client
    collection = expect(api.get(f"/api/v1/collections/{FORTUNES}"), 200)
    assert collection["document_count"] == LOADED
    assert collection["metadata"] == {"corpus": "fortunes"}
    listed = expect(api.get("/api/v1/collections"), 200)["collections"]
    assert [c["document_count"] for c in listed if c["name"] == FORTUNES] == [LOADED]
    for line in (loaded.lines[0], loaded.lines[499], loaded.lines[-1]):
        document = expect(api.get(f"/api/v1/collections/{FORTUNES}/documents/{line['id']}"), 200)
        assert document == {"id": line["id"], "text": line["text"], "metadata": {"source": line["source"]}}
    with_vector = expect(
        api.get(f"/api/v1/collections/{FORTUNES}/documents/{loaded.lines[7]['id']}", params={"include_vector": True}),
        200,
    )
    assert len(with_vector["vector"]) == MODEL_DIMENSION
    assert math.isclose(math.sqrt(sum(v * v for v in with_vector["vector"])), 1.0, abs_tol=1e-3)


@pytest.mark.parametrize(("doc_id", "paraphrase"), list(PARAPHRASES.items()), ids=list(PARAPHRASES))
def test_paraphrase_finds_its_fortune_first(server: AkidbServer, loaded: Loaded, doc_id: str, paraphrase: str) -> None:
    original = loaded.by_id[doc_id]
    assert paraphrase.lower() != original["text"].lower()
    results = search(server.client, FORTUNES, query=paraphrase, top_k=5)
    assert len(results) == 5
    ranked = [(hit["id"], round(hit["score"], 3)) for hit in results]
    assert results[0]["id"] == doc_id, f"{paraphrase!r} ranked {ranked}"
    top = results[0]
    assert top["text"] == original["text"]
    assert top["metadata"] == {"source": original["source"]}
    assert math.isclose(top["score"], 1.0 - top["distance"], abs_tol=1e-6)
    scores = [hit["score"] for hit in results]
    assert scores == sorted(scores, reverse=True), ranked


def test_wrong_dimension_is_rejected_with_index_and_dimensions(server: AkidbServer, loaded: Loaded) -> None:
    api = server.client
    before = document_count(api, FORTUNES)
    assert before >= LOADED
    detail = expect_error(
        upsert(api, FORTUNES, [{"id": "wrong-dim", "vector": unit_vector(1, 512)}]),
        422,
        "document 0",
        "512",
        str(MODEL_DIMENSION),
    )
    assert FORTUNES in detail
    assert document_count(api, FORTUNES) == before
    expect_error(api.get(f"/api/v1/collections/{FORTUNES}/documents/wrong-dim"), 404)
    # The same check on a search vector.
    expect_error(
        api.post(f"/api/v1/collections/{FORTUNES}/search", json={"vector": unit_vector(2, 100)}), 422, "100", "384"
    )


@pytest.mark.parametrize(
    ("bad_document", "fragments"),
    [
        ({"id": "atomic-bad", "vector": unit_vector(3, MODEL_DIMENSION - 1)}, ("383", "384")),
        ({"id": "atomic-bad", "text": "   "}, ("text",)),
        ({"id": "atomic-bad", "metadata": {"no": "text"}}, ()),
        ({"id": "atomic-bad", "vector": [1e39] * MODEL_DIMENSION}, ("float32",)),
    ],
    ids=["wrong-dimension", "blank-text", "no-text-no-vector", "beyond-float32"],
)
def test_one_bad_document_writes_nothing(
    server: AkidbServer, loaded: Loaded, bad_document: dict[str, Any], fragments: tuple[str, ...]
) -> None:
    api = server.client
    before = document_count(api, FORTUNES)
    good = [as_document(line) for line in fortunes()[2000:2004]]
    for document in good:
        document["id"] = f"atomic-{document['id']}"
    batch: list[dict[str, Any]] = [*good[:3], bad_document, good[3]]
    expect_error(upsert(api, FORTUNES, batch), 422, "document 3", *fragments)
    assert document_count(api, FORTUNES) == before
    for document in [*good, bad_document]:
        expect_error(api.get(f"/api/v1/collections/{FORTUNES}/documents/{document['id']}"), 404)


def test_pagination_walks_every_document_once(server: AkidbServer, loaded: Loaded) -> None:
    api = server.client
    count = document_count(api, FORTUNES)
    ids, pages = all_ids(api, FORTUNES, limit=64)
    assert len(ids) == len(set(ids)), "a document came back on two pages"
    assert len(ids) == count
    assert pages == math.ceil(count / 64)
    assert {line["id"] for line in loaded.lines} <= set(ids)
    # One big page says the same, with no cursor.
    page = expect(api.get(f"/api/v1/collections/{FORTUNES}/documents", params={"limit": 1000}), 200)
    if count <= 1000:
        assert page["next_cursor"] is None
    assert [doc["id"] for doc in page["documents"]] == ids[:1000]
    expect_error(api.get(f"/api/v1/collections/{FORTUNES}/documents", params={"limit": 0}), 400, "limit")


# --- validation and errors -------------------------------------------------------------------------------


def test_document_without_text_or_vector_is_rejected(server: AkidbServer) -> None:
    api = server.client
    create_collection(api, "no-content")
    expect_error(upsert(api, "no-content", [{"id": "a", "metadata": {"k": 1}}]), 422, "document 0")
    expect_error(upsert(api, "no-content", [{"id": "a", "text": "fine"}, {"id": "b"}]), 422, "document 1")
    assert document_count(api, "no-content") == 0
    expect_error(api.get("/api/v1/collections/no-content/documents/a"), 404)


@pytest.mark.parametrize(
    ("name", "text"),
    [("blank-empty", ""), ("blank-space", " "), ("blank-mixed", "\n\t  \r\n")],
    ids=["empty", "space", "whitespace"],
)
def test_empty_or_whitespace_text_is_rejected(server: AkidbServer, name: str, text: str) -> None:
    api = server.client
    create_collection(api, name)
    expect_error(upsert(api, name, [{"id": "blank", "text": text}]), 422, "document 0", "empty")
    expect_error(
        upsert(api, name, [{"id": "x", "text": "real words"}, {"id": "blank", "text": text}]), 422, "document 1"
    )
    assert document_count(api, name) == 0
    # A search with a blank query is as wrong as a blank document.
    expect_error(api.post(f"/api/v1/collections/{name}/search", json={"query": text}), 422)


def test_unknown_collection_is_404(server: AkidbServer) -> None:
    api = server.client
    name = "no-such-collection"
    expect_error(api.get(f"/api/v1/collections/{name}"), 404, name)
    expect_error(upsert(api, name, [{"text": "hello"}]), 404, name)
    expect_error(api.post(f"/api/v1/collections/{name}/search", json={"query": "hello"}), 404, name)
    expect_error(api.get(f"/api/v1/collections/{name}/documents/a"), 404)
    expect_error(api.get(f"/api/v1/collections/{name}/documents"), 404)
    expect_error(api.post(f"/api/v1/collections/{name}/delete", json={"ids": ["a"]}), 404)
    expect_error(api.delete(f"/api/v1/collections/{name}"), 404)


def test_duplicate_collection_name_is_409(server: AkidbServer) -> None:
    api = server.client
    first = create_collection(api, "twice", metadata={"n": 1})
    expect_error(api.post("/api/v1/collections", json={"name": "twice", "metadata": {"n": 2}}), 409, "twice")
    # The first one is untouched.
    assert expect(api.get("/api/v1/collections/twice"), 200)["metadata"] == first["metadata"] == {"n": 1}
    assert [c["name"] for c in expect(api.get("/api/v1/collections"), 200)["collections"]].count("twice") == 1


@pytest.mark.parametrize(
    "name",
    ["has space", "-leading-dash", "_leading_underscore", "x" * 64, "dots.in.name", "ümlaut", ""],
    ids=["space", "dash", "underscore", "too-long", "dots", "non-ascii", "empty"],
)
def test_bad_collection_name_is_422(server: AkidbServer, name: str) -> None:
    api = server.client
    expect_error(api.post("/api/v1/collections", json={"name": name}), 422, "name")
    assert name not in [c["name"] for c in expect(api.get("/api/v1/collections"), 200)["collections"]]


def test_longest_valid_collection_name_is_accepted(server: AkidbServer) -> None:
    name = "N" + "a_-9" * 15 + "zz"  # 63 characters, the longest allowed
    assert len(name) == 63
    assert create_collection(server.client, name)["name"] == name


@pytest.mark.parametrize(
    "fields",
    [{"dimension": 512}, {"dimension": 383, "embedding_model": MODEL}],
    ids=["default-model", "named-model"],
)
def test_dimension_different_from_the_model_is_422(server: AkidbServer, fields: dict[str, Any]) -> None:
    api = server.client
    detail = expect_error(api.post("/api/v1/collections", json={"name": "wrong-dim", **fields}), 422)
    assert str(fields["dimension"]) in detail
    assert str(MODEL_DIMENSION) in detail
    expect_error(api.get("/api/v1/collections/wrong-dim"), 404)
    # Giving the model's own dimension is fine.
    created = create_collection(api, "right-dim", dimension=MODEL_DIMENSION)
    assert created["dimension"] == MODEL_DIMENSION
    assert expect(api.delete("/api/v1/collections/right-dim"), 204) is None


def test_user_provided_collection_takes_vectors_only(server: AkidbServer) -> None:
    api = server.client
    created = create_collection(api, "vectors8", embedding_model=None, dimension=8)
    assert created["embedding_model"] is None
    assert created["dimension"] == 8
    expect_error(api.post("/api/v1/collections", json={"name": "no-dim", "embedding_model": None}), 422, "dimension")

    expect_error(upsert(api, "vectors8", [{"id": "t", "text": "words only"}]), 422, "document 0", "vector")
    expect_error(
        upsert(api, "vectors8", [{"id": "v", "vector": unit_vector(0, 8)}, {"id": "t", "text": "words only"}]),
        422,
        "document 1",
    )
    expect_error(upsert(api, "vectors8", [{"id": "v", "vector": [1.0, 2.0, 3.0]}]), 422, "document 0", "3", "8")
    assert document_count(api, "vectors8") == 0

    documents = [
        {"id": f"v{i:02d}", "vector": unit_vector(f"v{i}", 8), "text": f"stored text {i}", "metadata": {"i": i}}
        for i in range(40)
    ]
    response = expect(upsert(api, "vectors8", documents), 200)
    assert response["ids"] == [doc["id"] for doc in documents]
    assert (response["inserted"], response["updated"]) == (40, 0)
    assert response["embeddings_generated"] is False
    assert response["model"] is None
    assert document_count(api, "vectors8") == 40

    for document in documents[::5]:
        results = search(api, "vectors8", vector=document["vector"], top_k=3)
        assert results[0]["id"] == document["id"], results
        assert results[0]["distance"] == pytest.approx(0.0, abs=1e-5)
        assert results[0]["score"] == pytest.approx(1.0, abs=1e-5)
        assert results[0]["text"] == document["text"]
        assert results[0]["metadata"] == document["metadata"]
        assert results[1]["distance"] > results[0]["distance"]
    # Fewer documents than top_k: all of them, best first.
    everything = search(api, "vectors8", vector=documents[0]["vector"], top_k=100)
    assert len(everything) == 40
    distances = [hit["distance"] for hit in everything]
    assert distances == sorted(distances)
    # A text query has nothing to embed it with.
    expect_error(api.post("/api/v1/collections/vectors8/search", json={"query": "words"}), 422)
    stored = expect(api.get("/api/v1/collections/vectors8/documents/v03", params={"include_vector": True}), 200)
    assert stored["vector"] == pytest.approx(documents[3]["vector"], abs=1e-6)
    # API.md: a document is {"id", "text", "metadata"}, with null text and {} metadata when it has none; POST
    # .../get leaves out only what `include` leaves out.
    expect(upsert(api, "vectors8", [{"id": "bare", "vector": unit_vector("bare", 8)}]), 200)
    assert expect(api.get("/api/v1/collections/vectors8/documents/bare"), 200) == {
        "id": "bare",
        "text": None,
        "metadata": {},
    }
    page = expect(api.post("/api/v1/collections/vectors8/get", json={"ids": ["bare"], "include": ["metadata"]}), 200)
    assert page["documents"] == [{"id": "bare", "metadata": {}}]


# --- replace, delete, drop --------------------------------------------------------------------------------


def test_replacing_an_id_counts_as_updated_and_replaces_everything(server: AkidbServer) -> None:
    api = server.client
    name = "replace"
    create_collection(api, name)
    first = expect(
        upsert(
            api,
            name,
            [
                {"id": "r1", "text": "The cat slept on the warm windowsill all afternoon.", "metadata": {"v": 1}},
                {"id": "r2", "text": "A recipe for sourdough bread with a long cold ferment.", "metadata": {"v": 1}},
            ],
        ),
        200,
    )
    assert (first["inserted"], first["updated"]) == (2, 0)
    new_text = "Quarterly revenue grew by twelve percent thanks to strong cloud sales."
    second = expect(
        upsert(
            api,
            name,
            [
                {"id": "r1", "text": new_text, "metadata": {"v": 2}},
                {"id": "r3", "text": "Hiking boots should be broken in before a long trail."},
            ],
        ),
        200,
    )
    assert second["ids"] == ["r1", "r3"]
    assert (second["inserted"], second["updated"]) == (1, 1)
    assert document_count(api, name) == 3
    assert expect(api.get(f"/api/v1/collections/{name}/documents/r1"), 200) == {
        "id": "r1",
        "text": new_text,
        "metadata": {"v": 2},
    }
    # The index follows the new text, and the old text no longer matches r1 exactly.
    assert search(api, name, query="How much did sales and revenue increase this quarter?", top_k=1)[0]["id"] == "r1"
    old = search(api, name, query="The cat slept on the warm windowsill all afternoon.", top_k=3)
    assert all(hit["distance"] > 0.05 for hit in old), old
    assert [hit["id"] for hit in old].count("r1") <= 1
    # Upserting the same content again changes nothing but the counts.
    again = expect(upsert(api, name, [{"id": "r1", "text": new_text, "metadata": {"v": 2}}]), 200)
    assert (again["inserted"], again["updated"]) == (0, 1)
    assert document_count(api, name) == 3


def test_server_generated_ids_come_back_in_order(server: AkidbServer) -> None:
    api = server.client
    create_collection(api, "generated-ids")
    vectors = [unit_vector(f"g{i}", MODEL_DIMENSION) for i in range(3)]
    response = expect(
        upsert(
            api, "generated-ids", [{"vector": vectors[0]}, {"id": "mine", "vector": vectors[1]}, {"vector": vectors[2]}]
        ),
        200,
    )
    ids = response["ids"]
    assert len(ids) == 3
    assert ids[1] == "mine"
    assert len(set(ids)) == 3
    for generated in (ids[0], ids[2]):
        assert uuid.UUID(generated).version == 4, generated
    for doc_id, vector in zip(ids, vectors, strict=True):
        assert search(api, "generated-ids", vector=vector, top_k=1)[0]["id"] == doc_id


def test_delete_documents_by_ids(server: AkidbServer) -> None:
    api = server.client
    name = "deletions"
    create_collection(api, name)
    vectors = {doc_id: unit_vector(doc_id, MODEL_DIMENSION) for doc_id in ("a", "b", "c", "d")}
    expect(upsert(api, name, [{"id": k, "vector": v} for k, v in vectors.items()]), 200)
    assert document_count(api, name) == 4

    before = expect(api.get(f"/api/v1/collections/{name}"), 200)["seq"]
    assert expect(api.post(f"/api/v1/collections/{name}/delete", json={"ids": ["a", "b", "missing"]}), 200) == {
        "deleted": 2,
        "dry_run": False,
        "seq": before + 2,
    }
    assert document_count(api, name) == 2
    for gone in ("a", "b"):
        expect_error(api.get(f"/api/v1/collections/{name}/documents/{gone}"), 404)
        assert gone not in [hit["id"] for hit in search(api, name, vector=vectors[gone], top_k=10)]
    # Nothing deleted: the seq stays where the last write left it.
    assert expect(api.post(f"/api/v1/collections/{name}/delete", json={"ids": ["a"]}), 200) == {
        "deleted": 0,
        "dry_run": False,
        "seq": before + 2,
    }
    assert search(api, name, vector=vectors["c"], top_k=1)[0]["id"] == "c"

    assert expect(api.delete(f"/api/v1/collections/{name}/documents/c"), 204) is None
    expect_error(api.delete(f"/api/v1/collections/{name}/documents/c"), 404)
    assert [doc["id"] for doc in expect(api.get(f"/api/v1/collections/{name}/documents"), 200)["documents"]] == ["d"]
    # A deleted id can be written again.
    assert expect(upsert(api, name, [{"id": "a", "vector": vectors["a"]}]), 200)["inserted"] == 1
    assert search(api, name, vector=vectors["a"], top_k=1)[0]["id"] == "a"


def test_delete_collection_is_204_then_404(server: AkidbServer) -> None:
    api = server.client
    name = "doomed"
    create_collection(api, name)
    vector = unit_vector("doomed", MODEL_DIMENSION)
    expect(upsert(api, name, [{"id": "x", "vector": vector}]), 200)
    response = api.delete(f"/api/v1/collections/{name}")
    assert response.status_code == 204, response.text
    assert response.content == b""
    expect_error(api.get(f"/api/v1/collections/{name}"), 404, name)
    expect_error(api.delete(f"/api/v1/collections/{name}"), 404)
    expect_error(api.get(f"/api/v1/collections/{name}/documents/x"), 404)
    expect_error(upsert(api, name, [{"id": "y", "vector": vector}]), 404)
    assert name not in [c["name"] for c in expect(api.get("/api/v1/collections"), 200)["collections"]]
    # The name is free again, and the new collection starts empty: the old documents went with the old one.
    assert create_collection(api, name)["document_count"] == 0
    assert search(api, name, vector=vector, top_k=5) == []
    expect_error(api.get(f"/api/v1/collections/{name}/documents/x"), 404)


# --- durability: these stop the shared server and start it again on the same data dir ---------------------


def test_graceful_restart_keeps_every_document(server: AkidbServer, loaded: Loaded) -> None:
    api = server.client
    count_before = document_count(api, FORTUNES)
    sample = [line["id"] for line in loaded.lines[::50]]  # 20 documents across the whole load
    assert len(sample) == 20
    vectors = {
        doc_id: expect(
            api.get(f"/api/v1/collections/{FORTUNES}/documents/{doc_id}", params={"include_vector": True}), 200
        )["vector"]
        for doc_id in sample
    }
    collections_before = {c["name"] for c in expect(api.get("/api/v1/collections"), 200)["collections"]}

    exit_code = server.stop()
    # uvicorn finishes its shutdown and then re-raises SIGTERM, so a clean exit reads 0 or -SIGTERM.
    assert exit_code in (0, -signal.SIGTERM), f"SIGTERM should end the server cleanly\n{server.log_tail()}"
    shutdown_log = server.log_of_last_start()
    assert "Application shutdown complete" in shutdown_log, server.log_tail()
    assert "Traceback" not in shutdown_log, server.log_tail()
    server.start()

    api = server.client
    assert document_count(api, FORTUNES) == count_before
    assert {c["name"] for c in expect(api.get("/api/v1/collections"), 200)["collections"]} == collections_before
    ids, _ = all_ids(api, FORTUNES, limit=1000)
    assert {line["id"] for line in loaded.lines} <= set(ids)
    by_id = loaded.by_id
    for doc_id in sample:
        document = expect(
            api.get(f"/api/v1/collections/{FORTUNES}/documents/{doc_id}", params={"include_vector": True}), 200
        )
        assert document["text"] == by_id[doc_id]["text"]
        assert document["metadata"] == {"source": by_id[doc_id]["source"]}
        assert document["vector"] == pytest.approx(vectors[doc_id], abs=1e-6)
        results = search(api, FORTUNES, vector=vectors[doc_id], top_k=3, include=[])
        assert results[0]["id"] == doc_id, results
        assert results[0]["distance"] == pytest.approx(0.0, abs=1e-4)
        assert "text" not in results[0]
    # The model still answers after the restart.
    doc_id, paraphrase = next(iter(PARAPHRASES.items()))
    assert search(api, FORTUNES, query=paraphrase, top_k=1)[0]["id"] == doc_id


def test_kill9_right_after_upsert_200_loses_nothing(server: AkidbServer, loaded: Loaded) -> None:
    api = server.client
    count_before = document_count(api, FORTUNES)
    fresh = [as_document(line) for line in fortunes()[LOADED : LOADED + 50]]
    known = {line["text"] for line in loaded.lines}
    assert not any(document["text"] in known for document in fresh)

    response = upsert(api, FORTUNES, fresh)
    assert response.status_code == 200, response.text  # checked before the kill, and nothing in between
    exit_code = server.kill9()
    assert exit_code == -9
    body = response.json()
    assert body["ids"] == [document["id"] for document in fresh]
    assert (body["inserted"], body["updated"]) == (50, 0)

    server.start()
    api = server.client
    assert document_count(api, FORTUNES) == count_before + 50
    for document in fresh:
        stored = expect(api.get(f"/api/v1/collections/{FORTUNES}/documents/{document['id']}"), 200)
        assert stored == document
        results = search(api, FORTUNES, query=document["text"], top_k=2)
        assert results[0]["id"] == document["id"], (document["text"], results)
        assert results[0]["distance"] == pytest.approx(0.0, abs=1e-3)
    # The documents loaded before the crash are all still there too.
    ids, _ = all_ids(api, FORTUNES, limit=500)
    assert len(ids) == count_before + 50
    assert {line["id"] for line in loaded.lines} <= set(ids)

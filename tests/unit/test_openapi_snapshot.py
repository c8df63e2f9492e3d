"""The OpenAPI document is an interface: it changes only on purpose.

tests/openapi.json is the document a server with default settings serves at /schema/openapi.json. Any change
to the wire Structs, the routes, the errors they declare or akidb/gateway/openapi.py shows here as a diff;
if it is intended, `make openapi` rewrites the file and the change is reviewed with the code.

The other tests check what the document says with non-default settings: auth on, other limits.
"""

from __future__ import annotations

import difflib
import json
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from akidb.collections.validation import COLLECTION_NAME_RE, MAX_DIMENSION
from akidb.collections.validation import MAX_COLLECTION_NAME as MAX_NAME
from akidb.config import AuthSettings, EmbeddingSettings, LimitsSettings, Settings, StorageSettings
from akidb.gateway.access import RIGHTS, Right
from akidb.gateway.app import create_app
from akidb.gateway.openapi import document, render

SNAPSHOT = Path(__file__).resolve().parents[1] / "openapi.json"
DIFF_LINES = 80
ADMIN_KEY = "snapshot-admin-key-0123456789abcdef"


@pytest.fixture(scope="module")
def default_document() -> dict[str, Any]:
    return document()


@pytest.fixture(scope="module")
def auth_document() -> dict[str, Any]:
    return document(Settings(auth=AuthSettings(enabled=True, admin_key=ADMIN_KEY)))


def operations(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{method.upper()} {path}": op for path, item in doc["paths"].items() for method, op in item.items()}


def test_the_document_matches_the_committed_snapshot(default_document: dict[str, Any]) -> None:
    current = render(default_document)
    committed = SNAPSHOT.read_text(encoding="utf-8") if SNAPSHOT.is_file() else ""
    if current == committed:
        return
    diff = difflib.unified_diff(
        committed.splitlines(),
        current.splitlines(),
        fromfile="tests/openapi.json (committed)",
        tofile="/schema/openapi.json (what the server serves now)",
        lineterm="",
    )
    head = list(islice(diff, DIFF_LINES))
    pytest.fail(
        "The OpenAPI document differs from tests/openapi.json:\n"
        + "\n".join(head)
        + ("\n[... more ...]" if len(head) == DIFF_LINES else "")
        + "\n\nRun `make openapi` and commit tests/openapi.json if the change is intended.",
        pytrace=False,
    )


def test_the_snapshot_is_rendered_deterministically(default_document: dict[str, Any]) -> None:
    assert render(document()) == render(default_document)
    assert json.loads(render(default_document)) == default_document


def test_every_operation_has_a_right_and_documents_its_errors(auth_document: dict[str, Any]) -> None:
    for key, op in operations(auth_document).items():
        right = RIGHTS[key]
        codes = set(op["responses"])
        takes_input = "requestBody" in op or op.get("parameters")
        assert ("400" in codes) == bool(takes_input), key
        if "requestBody" in op:
            assert "413" in codes, key
        if right is Right.PUBLIC:
            assert not op.get("security"), key
            assert not codes & {"401", "403"}, key
        else:
            assert op["security"] == [{"bearer": []}, {"apiKey": []}], key
            assert "401" in codes, key
            assert ("403" in codes) == (right in (Right.WRITE, Right.ADMIN, Right.SERVER)), key
        if any(p["in"] == "path" for p in op.get("parameters", [])):
            assert "404" in codes, key
        for code, response in op["responses"].items():
            if code.startswith(("4", "5")) and key != "GET /health/ready":
                assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    schemes = auth_document["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "apiKey", "in": "header", "name": "X-API-Key"}


def test_with_auth_off_a_key_is_optional_and_never_refused(default_document: dict[str, Any]) -> None:
    for key, op in operations(default_document).items():
        assert not set(op["responses"]) & {"401", "403"}, key
        if RIGHTS[key] is not Right.PUBLIC:
            assert {} in op["security"], key


def test_public_metrics_need_no_key() -> None:
    doc = document(Settings(auth=AuthSettings(enabled=True, admin_key=ADMIN_KEY, public_metrics=True)))
    metrics = doc["paths"]["/metrics"]["get"]
    assert not metrics.get("security")
    assert "401" not in metrics["responses"]
    assert set(metrics["responses"]["200"]["content"]) == {"text/plain"}


def test_constraints_follow_the_configured_limits() -> None:
    limits = LimitsSettings(
        max_documents_per_upsert=7, max_inputs_per_embed=5, max_text_chars=300, max_top_k=40, max_ids_per_request=9
    )
    schemas = document(Settings(limits=limits))["components"]["schemas"]

    def field(component: str, name: str) -> dict[str, Any]:
        schema: dict[str, Any] = schemas[component]["properties"][name]
        non_null = [variant for variant in schema.get("oneOf", [schema]) if variant.get("type") != "null"]
        return non_null[0]

    assert field("UpsertRequest", "documents") | {"minItems": 1, "maxItems": 7} == field("UpsertRequest", "documents")
    assert field("DocumentIn", "text")["maxLength"] == 300
    assert (field("SearchRequest", "top_k")["minimum"], field("SearchRequest", "top_k")["maximum"]) == (1, 40)
    assert field("SearchRequest", "query")["maxLength"] == 300
    assert (field("EmbedRequest", "inputs")["minItems"], field("EmbedRequest", "inputs")["maxItems"]) == (1, 5)
    assert field("EmbedRequest", "inputs")["items"]["maxLength"] == 300
    assert field("GetRequest", "ids")["maxItems"] == 9
    assert field("DeleteRequest", "ids")["maxItems"] == 9
    assert field("SearchRequest", "include")["items"]["enum"] == ["text", "metadata", "vector"]
    assert field("CollectionCreate", "name")["pattern"] == COLLECTION_NAME_RE.pattern
    assert schemas["DocumentIn"]["anyOf"] == [
        {"required": ["text"], "properties": {"text": {"type": "string"}}},
        {"required": ["vector"], "properties": {"vector": {"type": "array"}}},
    ]
    for component in ("UpsertRequest", "SearchRequest", "EmbedRequest", "KeyCreate", "HnswIn"):
        assert schemas[component]["additionalProperties"] is False, component


def test_the_restated_inline_rules_agree_with_the_services(tmp_path: Path) -> None:
    """MAX_NAME and MAX_DIMENSION restate rules that exist only inline in the services: ask a real app."""
    settings = Settings(
        storage=StorageSettings(data_dir=str(tmp_path)), embedding=EmbeddingSettings(provider="mock", preload=False)
    )
    with TestClient(create_app(settings)) as client:

        def create(name: str, dimension: int) -> int:
            body = {"name": name, "embedding_model": None, "dimension": dimension}
            return client.post("/api/v1/collections", json=body).status_code

        assert create("a" * MAX_NAME, MAX_DIMENSION) == 201
        assert create("b" * (MAX_NAME + 1), 3) == 422
        assert create("c", MAX_DIMENSION + 1) == 422
        assert create("d", 0) == 422

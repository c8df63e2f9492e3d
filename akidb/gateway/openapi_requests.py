"""The request side of the OpenAPI document: the constraints the services enforce on bodies and parameters
(name pattern, ranges, limits, enums, non-empty arrays), stated from the same constants and settings."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from litestar.openapi.spec import OpenAPIType, Operation, Parameter, Reference, Schema

from akidb.auth.service import MAX_KEY_NAME, MAX_SCOPE_PATTERNS, SCOPE_PATTERN
from akidb.collections.documents import DOCUMENT_FIELDS, MAX_PAGE
from akidb.collections.search import INCLUDABLE, max_candidates
from akidb.collections.validation import (
    COLLECTION_NAME_RE,
    MAX_COLLECTION_NAME,
    MAX_DIMENSION,
    MAX_EF,
    MAX_HNSW_M,
)
from akidb.config import Settings
from akidb.gateway.schemas import MAX_METADATA_DEPTH, request_structs
from akidb.storage.models import MAX_DOCUMENT_ID_LENGTH

# At least one character that is not whitespace: what `text.strip()` refuses as empty (Python's `\s` is
# exactly str.isspace, which strip() uses).
NOT_BLANK = r"\S"


# --- request bodies ---------------------------------------------------------------------------------------


def forbid_unknown_fields(schemas: dict[str, Schema]) -> None:
    """Request Structs reject unknown fields; say so in the OpenAPI document, which Litestar does not."""
    for struct in request_structs():
        component = schemas.get(struct.__name__)
        if isinstance(component, Schema):
            component.additional_properties = False


def state_constraints(schemas: dict[str, Schema], settings: Settings) -> None:
    limits = settings.limits
    text: dict[str, Any] = {"max_length": limits.max_text_chars, "pattern": NOT_BLANK}
    edit = _Editor(schemas)

    name_rule = (
        "1 to 63 letters, digits, '_' or '-', starting with a letter or digit; "
        "the name of an existing collection is 409"
    )
    edit("CollectionCreate", "name", pattern=COLLECTION_NAME_RE.pattern, min_length=1, max_length=MAX_COLLECTION_NAME)
    edit.describe("CollectionCreate", "name", name_rule)
    edit("CollectionCreate", "dimension", kind=OpenAPIType.INTEGER, minimum=1, maximum=MAX_DIMENSION)
    edit.describe(
        "CollectionCreate",
        "dimension",
        "Omitted or null: the model's. Required when embedding_model is null; otherwise it must be one the model "
        "produces (422)",
    )
    edit.describe(
        "CollectionCreate",
        "embedding_model",
        "A model id (GET /api/v1/models; an unknown one is 422). Omitted: the server's default model. "
        "null: a collection of user-provided vectors",
    )
    edit("HnswIn", "m", minimum=2, maximum=MAX_HNSW_M)
    edit("HnswIn", "ef_construction", minimum=1, maximum=MAX_EF)
    edit("HnswIn", "ef_search", minimum=1, maximum=MAX_EF)
    edit("HnswPatch", "ef_search", minimum=1, maximum=MAX_EF)
    for field in ("m", "ef_construction"):
        edit.describe("HnswPatch", field, "Cannot be changed: any value is refused (422)")
    for field in ("name", "embedding_model", "dimension", "metric"):
        edit.describe("CollectionPatch", field, "Cannot be changed: any value is refused (422)")

    edit("UpsertRequest", "documents", min_items=1, max_items=limits.max_documents_per_upsert)
    edit.describe(
        "UpsertRequest",
        "documents",
        f"1 to limits.max_documents_per_upsert ({limits.max_documents_per_upsert}; more is 413); "
        "all are checked before anything is written, and one invalid document refuses the request",
    )
    edit("DocumentIn", "id", kind=OpenAPIType.STRING, min_length=1, max_length=MAX_DOCUMENT_ID_LENGTH)
    edit.describe("DocumentIn", "id", "Omitted or null: the server makes one (a UUID4); an existing id is replaced")
    # Not blank and no NUL are stated in words only: with a pattern next to maxLength on this field,
    # Schemathesis' coverage phase cannot build an upsert body at all and silently skips the operation.
    edit("DocumentIn", "text", kind=OpenAPIType.STRING, min_length=1, max_length=limits.max_text_chars)
    edit.describe(
        "DocumentIn",
        "text",
        f"Not blank, no NUL character, at most limits.max_text_chars ({limits.max_text_chars}; more is 413). "
        "Embedded with the collection's model when no vector is given",
    )
    edit("DocumentIn", "vector", kind=OpenAPIType.ARRAY, min_items=1)
    edit.describe(
        "DocumentIn",
        "vector",
        "As many finite values as the collection's dimension (422 otherwise); not all zeros for cosine. "
        "A document needs a text or a vector",
    )
    metadata = f"A JSON object nested at most {MAX_METADATA_DEPTH} levels (400 otherwise)"
    edit.describe("DocumentIn", "metadata", metadata + "; no NUL character in its keys or strings (422)")
    edit.describe("CollectionCreate", "metadata", metadata)
    edit.describe("CollectionPatch", "metadata", metadata + "; replaces the collection's metadata")
    edit.require_one_of("DocumentIn", {"text": OpenAPIType.STRING, "vector": OpenAPIType.ARRAY})

    ids_limit: dict[str, Any] = {"max_items": limits.max_ids_per_request}
    ids_text = f"At most limits.max_ids_per_request ({limits.max_ids_per_request}; more is 413)"
    edit("GetRequest", "ids", kind=OpenAPIType.ARRAY, **ids_limit)
    edit.describe("GetRequest", "ids", ids_text)
    edit("GetRequest", "limit", minimum=1, maximum=MAX_PAGE)
    edit("GetRequest", "include", items=True, enum=list(DOCUMENT_FIELDS))
    edit.describe("GetRequest", "cursor", "The next_cursor of the previous page (another value is 422)")
    edit("DeleteRequest", "ids", kind=OpenAPIType.ARRAY, **ids_limit)
    edit.describe("DeleteRequest", "ids", ids_text + "; ids or a non-empty filter is required (422)")

    edit("SearchRequest", "top_k", minimum=1, maximum=limits.max_top_k)
    edit.describe("SearchRequest", "top_k", f"1 to limits.max_top_k ({limits.max_top_k})")
    edit("SearchRequest", "ef_search", kind=OpenAPIType.INTEGER, minimum=1, maximum=MAX_EF)
    edit("SearchRequest", "include", items=True, enum=list(INCLUDABLE))
    edit("SearchRequest", "query", kind=OpenAPIType.STRING, **text)
    edit.describe(
        "SearchRequest",
        "query",
        f"Not blank, at most limits.max_text_chars ({limits.max_text_chars}; more is 413). dense: exactly one "
        "of query or vector; keyword: a query and no vector; hybrid: a query, and a vector if the collection has "
        "no model (422 otherwise)",
    )
    edit("SearchRequest", "vector", kind=OpenAPIType.ARRAY, min_items=1)
    edit.describe("SearchRequest", "vector", "As many finite values as the collection's dimension (422 otherwise)")
    edit.describe("SearchRequest", "fusion", "For mode hybrid only (422 with another mode)")
    edit("FusionIn", "k", exclusive_minimum=0)
    edit("FusionIn", "dense_weight", minimum=0)
    edit("FusionIn", "keyword_weight", minimum=0)
    candidates = max_candidates(limits.max_top_k)
    edit("FusionIn", "candidates", kind=OpenAPIType.INTEGER, minimum=1, maximum=candidates)

    inputs: dict[str, Any] = {"min_items": 1, "max_items": limits.max_inputs_per_embed}
    inputs_text = (
        f"1 to limits.max_inputs_per_embed ({limits.max_inputs_per_embed}) texts, each not blank and at most "
        f"limits.max_text_chars ({limits.max_text_chars}) characters (more is 413)"
    )
    edit("EmbedRequest", "inputs", **inputs)
    edit("EmbedRequest", "inputs", items=True, **text)
    edit.describe("EmbedRequest", "inputs", inputs_text)
    edit("OpenAIEmbeddingRequest", "input", kind=OpenAPIType.STRING, **text)
    edit("OpenAIEmbeddingRequest", "input", kind=OpenAPIType.ARRAY, **inputs)
    edit("OpenAIEmbeddingRequest", "input", items=True, **text)
    edit.describe("OpenAIEmbeddingRequest", "input", "One text, or " + inputs_text)
    dimensions = "A size the model was trained for (its dimension or a Matryoshka size; 422 otherwise)"
    for component in ("EmbedRequest", "OpenAIEmbeddingRequest"):
        edit(component, "dimensions", kind=OpenAPIType.INTEGER, minimum=1)
        edit.describe(component, "dimensions", dimensions)
        edit.describe(component, "model", "A model id (GET /api/v1/models; an unknown one is 404). null: the default")

    edit("KeyCreate", "name", min_length=1, max_length=MAX_KEY_NAME, pattern=NOT_BLANK)
    edit.describe("KeyCreate", "name", f"1 to {MAX_KEY_NAME} characters once surrounding whitespace is removed")
    edit("KeyCreate", "collections", kind=OpenAPIType.ARRAY, min_items=1, max_items=MAX_SCOPE_PATTERNS)
    edit("KeyCreate", "collections", items=True, pattern=SCOPE_PATTERN.pattern)
    edit.describe(
        "KeyCreate",
        "collections",
        f"1 to {MAX_SCOPE_PATTERNS} collection names or globs ('team-*') the key is limited to; null: every collection",
    )
    edit.describe("KeyCreate", "expires_at", "In the future (422 otherwise); without a zone, UTC. null: never")
    _add_examples(schemas)


# Request bodies as API.md shows them: for readers, and the first cases a fuzzer sends.
EXAMPLES: dict[str, list[dict[str, Any]]] = {
    "CollectionCreate": [
        {"name": "docs", "metric": "cosine", "hnsw": {"m": 16, "ef_construction": 200, "ef_search": 64}},
        {"name": "vectors", "embedding_model": None, "dimension": 3, "metric": "l2"},
    ],
    "UpsertRequest": [
        {"documents": [{"id": "a1", "text": "AkiDB is a RAM-first vector database", "metadata": {"source": "docs"}}]}
    ],
    "SearchRequest": [
        {"query": "edge vector database", "top_k": 10, "include": ["text", "metadata"]},
        {"query": "vector database", "mode": "hybrid", "fusion": {"k": 60, "dense_weight": 1.0, "keyword_weight": 1.0}},
    ],
    "EmbedRequest": [{"inputs": ["AkiDB is a RAM-first vector database"], "normalize": True}],
    "OpenAIEmbeddingRequest": [{"input": "AkiDB is a RAM-first vector database"}],
    "KeyCreate": [{"name": "search service", "role": "read", "collections": ["docs", "team-*"]}],
}


def _add_examples(schemas: dict[str, Schema]) -> None:
    for component, examples in EXAMPLES.items():
        schema = schemas.get(component)
        if schema is None:
            raise RuntimeError(f"OpenAPI: {component} is not in the document; update {__name__}")
        schema.examples = examples


class _Editor:
    """Sets keywords on one field of a component schema, failing loudly if the field is not there."""

    def __init__(self, schemas: dict[str, Schema]) -> None:
        self.schemas = schemas

    def _properties(self, component: str, field: str) -> dict[str, Reference | Schema]:
        schema = self.schemas.get(component)
        properties = schema.properties if isinstance(schema, Schema) else None
        if properties is None or field not in properties:
            raise RuntimeError(f"OpenAPI: {component}.{field} is not in the document; update {__name__}")
        return properties

    def __call__(
        self, component: str, field: str, *, kind: OpenAPIType | None = None, items: bool = False, **changes: Any
    ) -> None:
        """Set `changes` on the field's schema: on its variant of type `kind` where it is a oneOf (the non-null
        one by default), and on the items of its array form if `items`."""
        properties = self._properties(component, field)
        changed: list[Schema] = []
        properties[field] = _edited(properties[field], kind, items, changes, changed)
        if not changed:
            raise RuntimeError(f"OpenAPI: {component}.{field} has no {kind or 'non-null'} form to constrain")

    def require_one_of(self, component: str, fields: dict[str, OpenAPIType]) -> None:
        """At least one of `fields` present and not null."""
        schema = self.schemas[component]
        for field in fields:
            self._properties(component, field)
        schema.any_of = [
            Schema(required=[field], properties={field: Schema(type=kind)}) for field, kind in fields.items()
        ]

    def describe(self, component: str, field: str, text: str) -> None:
        properties = self._properties(component, field)
        schema = properties[field]
        if isinstance(schema, Schema) and not schema.description:
            properties[field] = replace(schema, description=text)


def _edited(
    schema: Reference | Schema,
    kind: OpenAPIType | None,
    items: bool,
    changes: dict[str, Any],
    changed: list[Schema],
) -> Reference | Schema:
    if not isinstance(schema, Schema):
        return schema
    if schema.one_of is not None:
        return replace(schema, one_of=[_edited(variant, kind, items, changes, changed) for variant in schema.one_of])
    if schema.type == OpenAPIType.NULL or (kind is not None and schema.type != kind):
        return schema
    if items:
        if schema.type != OpenAPIType.ARRAY or schema.items is None:
            return schema
        return replace(schema, items=_edited(schema.items, None, False, changes, changed))
    new = replace(schema, **changes)
    changed.append(new)
    return new


# --- parameters -------------------------------------------------------------------------------------------


def constrain_parameters(operation: Operation) -> None:
    """Path parameters that name a thing: only names that can exist (another is 404)."""
    for parameter in operation.parameters or ():
        if not isinstance(parameter, Parameter) or not isinstance(parameter.schema, Schema):
            continue
        if parameter.param_in == "path" and parameter.name == "name":
            parameter.schema = replace(
                parameter.schema, pattern=COLLECTION_NAME_RE.pattern, min_length=1, max_length=MAX_COLLECTION_NAME
            )
            parameter.description = "A collection name; 404 if there is none of that name (or the key may not see it)"
        elif parameter.param_in == "path" and parameter.name == "doc_id":
            parameter.schema = replace(parameter.schema, min_length=1, max_length=MAX_DOCUMENT_ID_LENGTH)
        elif parameter.param_in == "query" and parameter.name == "limit":
            parameter.schema = replace(parameter.schema, minimum=1, maximum=MAX_PAGE)

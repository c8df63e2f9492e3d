from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from akidb.collections.validation import check_collection_name, check_vector, prepare_documents
from akidb.errors import DimensionMismatch, InvalidDocument, InvalidRequest, PayloadTooLarge


@dataclass
class Doc:
    id: str | None = None
    text: str | None = None
    vector: list[float] | None = None
    metadata: dict[str, Any] | None = field(default=None)


def prepare(docs: list[Doc], *, dimension: int = 3, metric: str = "cosine", has_model: bool = True, limit: int = 10):
    return prepare_documents(
        docs, collection="docs", dimension=dimension, metric=metric, has_model=has_model, max_documents=limit
    )


def test_valid_documents_are_prepared() -> None:
    prepared = prepare([Doc(id="a", text="hello"), Doc(vector=[1, 2, 3], metadata={"k": 1})])
    assert prepared[0].vector is None
    assert prepared[0].text == "hello"
    assert prepared[1].vector is not None
    assert prepared[1].vector.dtype == np.float32
    assert prepared[1].metadata == {"k": 1}


def test_wrong_dimension_names_document_and_both_sizes() -> None:
    with pytest.raises(DimensionMismatch) as info:
        prepare([Doc(text="ok"), Doc(vector=[1.0, 2.0])])
    assert info.value.detail == "document 1: vector has 2 values, collection 'docs' expects 3"
    assert info.value.extra["field"] == "documents[1].vector"
    assert info.value.status_code == 422


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1e39])
def test_non_finite_values_are_rejected(bad: float) -> None:
    with pytest.raises(InvalidDocument) as info:
        prepare([Doc(vector=[0.5, bad, 0.1])])
    assert "document 0" in info.value.detail


def test_zero_vector_is_rejected_for_cosine_only() -> None:
    with pytest.raises(InvalidDocument, match="all zeros"):
        prepare([Doc(vector=[0, 0, 0])])
    assert prepare([Doc(vector=[0, 0, 0])], metric="l2")[0].vector is not None


def test_neither_text_nor_vector() -> None:
    with pytest.raises(InvalidDocument, match="document 0: give a text or a vector"):
        prepare([Doc(id="x")])


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_blank_text_is_rejected(text: str) -> None:
    with pytest.raises(InvalidDocument, match="text is empty"):
        prepare([Doc(text=text)])


def test_text_only_in_user_provided_collection() -> None:
    with pytest.raises(InvalidDocument, match="no embedding model"):
        prepare([Doc(text="hello")], has_model=False)


def test_duplicate_ids_in_one_request() -> None:
    with pytest.raises(InvalidDocument, match="document 2: id 'a' is also used by document 0"):
        prepare([Doc(id="a", text="x"), Doc(id="b", text="y"), Doc(id="a", text="z")])


def test_empty_and_too_long_ids() -> None:
    with pytest.raises(InvalidDocument, match="id must be"):
        prepare([Doc(id="", text="x")])
    with pytest.raises(InvalidDocument, match="id must be"):
        prepare([Doc(id="x" * 513, text="x")])


def test_empty_request_and_too_many_documents() -> None:
    with pytest.raises(InvalidRequest, match="at least one"):
        prepare([])
    with pytest.raises(PayloadTooLarge) as info:
        prepare([Doc(text="x")] * 11, limit=10)
    assert info.value.status_code == 413


@pytest.mark.parametrize("name", ["docs", "A1", "a-b_c", "x" * 63])
def test_good_collection_names(name: str) -> None:
    check_collection_name(name)


@pytest.mark.parametrize("name", ["", "-docs", "_x", "a b", "x" * 64, "é", "a/b"])
def test_bad_collection_names(name: str) -> None:
    with pytest.raises(InvalidRequest):
        check_collection_name(name)


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        (Doc(text="a\x00b"), "documents[1].text"),
        (Doc(vector=[1, 2, 3], metadata={"k": "a\x00"}), "documents[1].metadata.k"),
        (Doc(vector=[1, 2, 3], metadata={"k": [1, {"j": "\x00"}]}), "documents[1].metadata.k[1].j"),
        (Doc(vector=[1, 2, 3], metadata={"k\x00": 1}), "documents[1].metadata"),
    ],
)
def test_nul_characters_are_rejected_on_every_database(doc: Doc, where: str) -> None:
    """PostgreSQL refuses NUL in text and JSONB; SQLite would take it. One rule for both: a 422."""
    with pytest.raises(InvalidDocument) as caught:
        prepare([Doc(text="fine"), doc])
    assert caught.value.extra["field"] == where
    assert caught.value.detail.startswith("document 1:")


# Values that exercise every refusal: non-finite, past float32, a squared norm past float32, zeros, subnormals.
_VALUE = st.one_of(
    st.floats(-2.0, 2.0, width=32),
    st.sampled_from([0.0, math.inf, -math.inf, math.nan, 1e39, -1e39, 1e19, 1e-45, 1e-300]),
)


def _reference(vectors: list[list[float]], metric: str) -> list[np.ndarray] | tuple[str, str]:
    """The documents' vectors as the step-by-step check_vector path would give them, or its first error."""
    out = []
    for position, vector in enumerate(vectors):
        try:
            values = np.asarray(vector, dtype=np.float64)
            with np.errstate(over="ignore", invalid="ignore"):
                as_f32 = values.astype(np.float32)
                reach = np.float32(4) * np.dot(as_f32, as_f32)
            if not (np.isfinite(values).all() and np.isfinite(as_f32).all() and np.isfinite(reach)):
                raise InvalidDocument("refused", extra={"field": f"documents[{position}].vector"})
            if metric == "cosine" and not as_f32.any():
                raise InvalidDocument("zeros", extra={"field": f"documents[{position}].vector"})
        except InvalidDocument as error:
            return ("error", error.extra["field"])
        out.append(as_f32)
    return out


@settings(max_examples=200, deadline=None)
@given(
    vectors=st.lists(st.lists(_VALUE, min_size=3, max_size=3), min_size=1, max_size=6),
    metric=st.sampled_from(["cosine", "l2", "ip"]),
)
def test_whole_batch_vector_checks_agree_with_one_at_a_time(vectors: list[list[float]], metric: str) -> None:
    """The batch and single-vector fast paths accept exactly what the step-by-step checks accept, give the same
    float32 values, and refuse the first bad document by its field."""
    expected = _reference(vectors, metric)
    if isinstance(expected, tuple):
        with pytest.raises(InvalidDocument) as info:
            prepare([Doc(vector=vector) for vector in vectors], metric=metric)
        assert info.value.extra["field"].startswith(expected[1])  # ".vector" or ".vector[i]" for a value
        return
    prepared = prepare([Doc(vector=vector) for vector in vectors], metric=metric)
    for doc, want in zip(prepared, expected, strict=True):
        assert doc.vector is not None
        assert doc.vector.tobytes() == want.tobytes()
    for vector, want in zip(vectors, expected, strict=True):
        got = check_vector(vector, dimension=3, metric=metric, collection="docs", where="q", field="vector")
        assert got.tobytes() == want.tobytes()

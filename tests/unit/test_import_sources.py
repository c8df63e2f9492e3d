"""The import file readers: the offset after each record is where a resumed import starts, so reading from any
record's end offset must give exactly the records after it, in JSON Lines and in CSV (quoted fields spanning
lines, commas, quotes and non-ASCII text included)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from akidb.tools.sources import FieldMap, Record, csv_header, read_csv, read_jsonl

texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r"), min_size=1, max_size=40)
rows = st.lists(
    st.fixed_dictionaries({"id": st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True), "text": texts, "tag": texts}),
    min_size=1,
    max_size=25,
)


def _summary(records: list[Record]) -> list[tuple[Any, ...]]:
    return [(r.line, r.end_offset, r.reason, json.dumps(r.document, sort_keys=True, default=bytes)) for r in records]


def _jsonl(rows: list[dict[str, str]]) -> bytes:
    return b"".join(json.dumps(row, ensure_ascii=False).encode() + b"\n" for row in rows)


def _csv(rows: list[dict[str, str]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["id", "text", "tag"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


@settings(max_examples=60, deadline=None)
@given(rows, st.data())
def test_jsonl_resumes_at_any_record_boundary(rows: list[dict[str, str]], data: st.DataObject) -> None:
    raw = _jsonl(rows)
    everything = list(read_jsonl(io.BytesIO(raw), FieldMap(), offset=0, line=0))
    assert [r.document["id"] if r.document else None for r in everything] == [row["id"] for row in rows]
    assert [r.document["metadata"] for r in everything if r.document] == [{"tag": row["tag"]} for row in rows]
    assert everything[-1].end_offset == len(raw)
    cut = data.draw(st.integers(0, len(everything) - 1))
    stream = io.BytesIO(raw)
    stream.seek(everything[cut].end_offset)
    rest = list(read_jsonl(stream, FieldMap(), offset=everything[cut].end_offset, line=everything[cut].line))
    assert _summary(rest) == _summary(everything[cut + 1 :])


@settings(max_examples=60, deadline=None)
@given(rows, st.data())
def test_csv_resumes_at_any_record_boundary(rows: list[dict[str, str]], data: st.DataObject) -> None:
    raw = _csv(rows)
    header, header_end = csv_header(io.BytesIO(raw), ",")
    assert header == ["id", "text", "tag"]
    stream = io.BytesIO(raw)
    stream.seek(header_end)
    everything = list(read_csv(stream, FieldMap(), header, offset=header_end, line=1, delimiter=","))
    readable = [r for r in everything if r.document is not None]
    expected = [row for row in rows if row["text"].strip() or row["tag"].strip() or row["id"]]
    assert [r.document["text"] for r in readable if r.document] == [row["text"] for row in expected]
    assert everything[-1].end_offset == len(raw)
    cut = data.draw(st.integers(0, len(everything) - 1))
    stream = io.BytesIO(raw)
    stream.seek(everything[cut].end_offset)
    start = everything[cut]
    rest = list(read_csv(stream, FieldMap(), header, offset=start.end_offset, line=start.line, delimiter=","))
    assert _summary(rest) == _summary(everything[cut + 1 :])


def test_a_vector_in_a_jsonl_file_passes_through_as_its_json_text() -> None:
    raw = (
        b'{"id": "v", "vector": [0.1, 2, -3e-05]}\n{"id": "w", "vector": "oops"}\n'
        b'{"id": "x", "vector": null, "text": "t"}\n'
    )
    first, second, third = read_jsonl(io.BytesIO(raw), FieldMap(), offset=0, line=0)
    assert isinstance(first.document, dict)
    assert msgspec.json.encode(first.document["vector"]) == b"[0.1, 2, -3e-05]"
    assert second.reason is not None
    assert "array of numbers" in second.reason
    assert third.document == {"id": "x", "text": "t"}


def test_records_that_cannot_be_documents_carry_their_reason() -> None:
    raw = b'{"id": 1, "text": "ok"}\n{"text": 5}\n[1]\n{oops\n\n{"metadata": {"a": 1}}\n{"id": true, "text": "x"}\n'
    records = list(read_jsonl(io.BytesIO(raw), FieldMap(), offset=0, line=0))
    assert records[0].document == {"id": "1", "text": "ok"}
    reasons = [(r.line, r.reason) for r in records[1:]]
    assert [line for line, _ in reasons] == [2, 3, 4, 6, 7]
    assert "must be a string" in str(reasons[0][1])
    assert "not a JSON object" in str(reasons[1][1])
    assert "not valid JSON" in str(reasons[2][1])
    assert "neither" in str(reasons[3][1])
    assert "string or an integer" in str(reasons[4][1])

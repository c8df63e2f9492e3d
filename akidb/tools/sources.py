"""Reading an import file: JSON Lines or CSV, one document per record, with the byte offset after each.

The offsets are what makes `akidb import` resumable: the state file records the offset up to which every
document was acknowledged, and a rerun seeks there. Records are read in binary so that the offsets are exact.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, Literal

import msgspec

Format = Literal["jsonl", "csv"]


@dataclass(frozen=True)
class FieldMap:
    """Which field of a record is which part of a document; the rest go into metadata."""

    id: str = "id"
    text: str = "text"
    vector: str = "vector"
    metadata: str = "metadata"
    # Other fields copied into metadata: None means every other field, () none of them.
    extra: tuple[str, ...] | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "text": self.text,
            "vector": self.vector,
            "metadata": self.metadata,
            "extra": None if self.extra is None else list(self.extra),
        }


@dataclass
class Record:
    """One record of the file: a document to send, or the reason it cannot be sent."""

    line: int
    # Offset just past this record: where a rerun starts once everything up to here is acknowledged.
    end_offset: int
    document: dict[str, Any] | None = None
    reason: str | None = None
    # The rejects file's code for a record refused before it was sent.
    code: str = "unreadable"
    raw: str | None = None
    size: int = 0


class SourceError(Exception):
    """The file cannot be read as the format says (a fatal error, unlike one bad record)."""


def detect_format(path: str, given: str | None) -> Format:
    if given == "jsonl":
        return "jsonl"
    if given == "csv":
        return "csv"
    return "csv" if path.lower().endswith((".csv", ".tsv")) else "jsonl"


def _as_document(fields: dict[str, Any], mapping: FieldMap, *, from_csv: bool) -> dict[str, Any]:
    """The document in a record, or ValueError naming what is wrong with it."""
    document: dict[str, Any] = {}
    doc_id = fields.get(mapping.id)
    if doc_id is not None and doc_id != "":
        if isinstance(doc_id, bool) or not isinstance(doc_id, str | int):
            raise ValueError(f"`{mapping.id}` must be a string or an integer, got {type(doc_id).__name__}")
        document["id"] = str(doc_id)
    text = fields.get(mapping.text)
    if text is not None and text != "":
        if not isinstance(text, str):
            raise ValueError(f"`{mapping.text}` must be a string, got {type(text).__name__}")
        document["text"] = text
    vector = fields.get(mapping.vector)
    if isinstance(vector, msgspec.Raw):
        # Passed through as it stands in the file: parsing 384 floats to send them again is most of an
        # importer's CPU, which the server (on the same machine, often) needs more. The server checks the
        # values, and a bad one is a 400/422 naming the document, which the importer isolates.
        head = bytes(memoryview(vector)[:1])
        if head == b"[":
            document["vector"] = vector
        elif bytes(vector) != b"null":
            raise ValueError(f"`{mapping.vector}` must be an array of numbers")
    elif vector is not None and vector != "":
        if from_csv and isinstance(vector, str):
            vector = _json_cell(vector, mapping.vector)
        try:
            vector = msgspec.convert(vector, list[float])
        except msgspec.ValidationError:
            raise ValueError(f"`{mapping.vector}` must be an array of numbers") from None
        if not all(map(math.isfinite, vector)):
            raise ValueError(f"`{mapping.vector}` holds a value that is not finite")
        document["vector"] = vector
    metadata = fields.get(mapping.metadata)
    if from_csv and isinstance(metadata, str) and metadata != "":
        metadata = _json_cell(metadata, mapping.metadata)
    if metadata is not None and metadata != "" and not isinstance(metadata, dict):
        raise ValueError(f"`{mapping.metadata}` must be a JSON object, got {type(metadata).__name__}")
    merged = dict(metadata or {})
    known = {mapping.id, mapping.text, mapping.vector, mapping.metadata}
    names = [name for name in fields if name not in known] if mapping.extra is None else mapping.extra
    for name in names:
        if name in fields and name not in known:
            merged[name] = fields[name]
    if merged:
        document["metadata"] = merged
    if "text" not in document and "vector" not in document:
        raise ValueError(f"the record has neither `{mapping.text}` nor `{mapping.vector}`")
    return document


def _json_cell(cell: str, name: str) -> Any:
    try:
        return msgspec.json.decode(cell)
    except msgspec.DecodeError as exc:
        raise ValueError(f"`{name}` is not valid JSON ({exc})") from exc


def _record(line: int, end: int, fields: Any, mapping: FieldMap, raw: str, size: int, *, from_csv: bool) -> Record:
    """`size`: the record's bytes in the file, close enough to the document's in a request (no second encode)."""
    if not isinstance(fields, dict):
        return Record(line, end, reason="the line is not a JSON object", raw=raw)
    try:
        document = _as_document(fields, mapping, from_csv=from_csv)
    except ValueError as exc:
        return Record(line, end, reason=str(exc), raw=raw)
    return Record(line, end, document=document, size=size)


def read_jsonl(stream: IO[bytes], mapping: FieldMap, *, offset: int, line: int) -> Iterator[Record]:
    """Records from `offset` on (the file positioned there), numbered from `line` + 1; blank lines skipped."""
    position = offset
    for raw_line in stream:
        position += len(raw_line)
        line += 1
        if not raw_line.strip():
            continue
        raw = raw_line.decode("utf-8", errors="replace").rstrip("\r\n")
        try:
            values = msgspec.json.decode(raw_line, type=dict[str, msgspec.Raw])
        except msgspec.ValidationError:
            yield Record(line, position, reason="the line is not a JSON object", raw=raw)
            continue
        except msgspec.DecodeError as exc:
            yield Record(line, position, reason=f"not valid JSON ({exc})", raw=raw)
            continue
        # Every field parsed but the vector, which stays as its JSON text.
        fields = {name: raw if name == mapping.vector else msgspec.json.decode(raw) for name, raw in values.items()}
        yield _record(line, position, fields, mapping, raw, len(raw_line), from_csv=False)


class _CountingLines:
    """Decoded lines for csv.reader, counting the bytes it has taken: csv.reader pulls exactly the lines of one
    record (a quoted field may span several), so after each record `position` is the offset just past it."""

    def __init__(self, stream: IO[bytes], position: int) -> None:
        self.stream = stream
        self.position = position

    def __iter__(self) -> _CountingLines:
        return self

    def __next__(self) -> str:
        raw = self.stream.readline()
        if not raw:
            raise StopIteration
        self.position += len(raw)
        return raw.decode("utf-8-sig" if self.position == len(raw) else "utf-8", errors="replace")


def csv_header(stream: IO[bytes], delimiter: str) -> tuple[list[str], int]:
    """The header row and the offset just past it."""
    lines = _CountingLines(stream, 0)
    try:
        header = next(csv.reader(lines, delimiter=delimiter))
    except StopIteration:
        raise SourceError("the CSV file is empty: it needs a header row") from None
    except csv.Error as exc:
        raise SourceError(f"the CSV header cannot be read ({exc})") from exc
    return [name.strip() for name in header], lines.position


def read_csv(
    stream: IO[bytes], mapping: FieldMap, header: Sequence[str], *, offset: int, line: int, delimiter: str
) -> Iterator[Record]:
    """Records after the header (the file positioned at `offset`); `line` is the number of lines before it."""
    lines = _CountingLines(stream, offset)
    reader = csv.reader(lines, delimiter=delimiter)
    base = line
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Record(base + reader.line_num, lines.position, reason=f"not a valid CSV row ({exc})")
            continue
        number = base + reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        raw = _csv_text(row, delimiter)
        if len(row) != len(header):
            reason = f"the row has {len(row)} cells, the header {len(header)}"
            yield Record(number, lines.position, reason=reason, raw=raw)
            continue
        fields = dict(zip(header, row, strict=True))
        yield _record(number, lines.position, fields, mapping, raw, len(raw.encode()), from_csv=True)


def _csv_text(row: list[str], delimiter: str) -> str:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="").writerow(row)
    return out.getvalue()

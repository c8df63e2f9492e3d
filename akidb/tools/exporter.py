"""`akidb export`: a collection (or the documents that pass a filter) as JSON Lines that `akidb import` reads.

Each line is {"id", "text", "metadata"} and, on request, "vector". Written to a file, the export goes to a
temporary file renamed into place at the end, so a failed export never leaves a truncated file behind.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgspec

from akidb.client import AsyncClient, Document
from akidb.tools.progress import Reporter


@dataclass(frozen=True)
class ExportOptions:
    collection: str
    output: Path | None  # None: stdout
    filter: dict[str, Any] | None = None
    include_vectors: bool = False
    page_size: int = 500


def as_line(document: Document, include_vector: bool) -> bytes:
    line: dict[str, Any] = {"id": document.id}
    if document.text is not None:
        line["text"] = document.text
    line["metadata"] = document.metadata
    if include_vector and isinstance(document.vector, list):
        line["vector"] = document.vector
    return msgspec.json.encode(line) + b"\n"


@contextlib.contextmanager
def _destination(output: Path | None) -> Iterator[IO[bytes]]:
    if output is None:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, output)
    finally:
        temporary.unlink(missing_ok=True)


async def export(client: AsyncClient, options: ExportOptions, reporter: Reporter) -> int:
    """Write the documents; returns how many."""
    total = await client.count(options.collection, options.filter)
    include = ("text", "metadata", "vector") if options.include_vectors else ("text", "metadata")
    written = 0
    reporter.start(total, 0)
    try:
        with _destination(options.output) as stream:
            async for document in client.iter_documents(
                options.collection, filter=options.filter, include=include, page_size=options.page_size
            ):
                stream.write(as_line(document, options.include_vectors))
                written += 1
                if written % options.page_size == 0:
                    reporter.update(written, written, 0)
            reporter.update(written, written, 0)
    finally:
        reporter.stop()
    return written

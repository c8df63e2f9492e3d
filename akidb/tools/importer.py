"""`akidb import`: a file of documents into a collection, in batches with a few requests in flight, resumable.

Batches are contiguous runs of records. They complete in any order, but are committed in file order: a
batch's rejects are appended to the rejects file and the state moves past it only once every batch before it
is committed, so a rerun after a kill starts at the first batch not known to be done. Batches sent again after
a kill carry the same ids (the file's, or a hash of the content), so they replace rather than duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec

from akidb.client import AkiDBError, AsyncClient, BadRequest, NotFound, PayloadTooLarge, ValidationFailed, document_id
from akidb.tools.progress import Reporter
from akidb.tools.sources import FieldMap, Format, Record, SourceError, csv_header, read_csv, read_jsonl
from akidb.tools.state import ImportState, fresh_state, load_state, rejects_path, save_state

DEFAULT_BATCH_DOCUMENTS = 256
DEFAULT_BATCH_BYTES = 8 * 1024 * 1024
# The state (and the rejects) reach the disk at most this often, and at the end: two fsyncs per batch cost a
# vector import 10 % of its rate. A kill loses at most this much progress, sent again (idempotently) on rerun.
SAVE_INTERVAL_S = 0.5
# JSON around the documents of one upsert request, and between them.
_ENVELOPE_BYTES = 64
_DOCUMENT_FIELD = re.compile(r"^documents\[(\d+)\]")


@dataclass(frozen=True)
class ImportOptions:
    source: Path
    collection: str
    format: Format
    mapping: FieldMap = field(default_factory=FieldMap)
    batch_documents: int | None = None
    batch_bytes: int | None = None
    concurrency: int = 2
    delimiter: str = ","
    create: bool = False


@dataclass
class ImportSummary:
    imported: int = 0
    rejected: int = 0
    inserted: int = 0
    updated: int = 0
    # Documents handled in this run (a resumed run counts from where it started).
    this_run: int = 0
    resumed_at_line: int = 0
    already_done: bool = False
    fatal: str | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.fatal else 2 if self.rejected else 0


class ImportFailed(Exception):
    """A fatal error: nothing more is sent; the state stays at the last batch known to be done."""


@dataclass
class _Batch:
    number: int
    records: list[Record]
    end_offset: int
    end_line: int
    ids: set[str] = field(default_factory=set)


@dataclass
class _Outcome:
    batch: _Batch
    accepted: int = 0
    inserted: int = 0
    updated: int = 0
    rejects: list[dict[str, Any]] = field(default_factory=list)


def _reject(record: Record, reason: str, code: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"line": record.line, "reason": reason, "code": code}
    if record.document is not None:
        entry["document"] = record.document
    elif record.raw is not None:
        entry["raw"] = record.raw
    return entry


class Importer:
    def __init__(self, client: AsyncClient, options: ImportOptions, reporter: Reporter) -> None:
        self.client = client
        self.options = options
        self.reporter = reporter
        self.summary = ImportSummary()
        self.max_documents = options.batch_documents or DEFAULT_BATCH_DOCUMENTS
        self.max_bytes = options.batch_bytes or DEFAULT_BATCH_BYTES
        self.saved_at = 0.0

    async def run(self, *, restart: bool) -> ImportSummary:
        source = self.options.source
        if not source.is_file():
            raise ImportFailed(f"{source} is not a file")
        await self._prepare_server()
        mapping = self.options.mapping.describe() | {"delimiter": self.options.delimiter}
        identity: dict[str, Any] = {
            "collection": self.options.collection,
            "format": self.options.format,
            "mapping": mapping,
        }
        state = None if restart else load_state(source, **identity)
        if state is not None and state.done:
            self.summary = ImportSummary(
                imported=state.imported, rejected=state.rejected, already_done=True, resumed_at_line=state.line
            )
            return self.summary
        if state is None:
            rejects_path(source).unlink(missing_ok=True)
            state = fresh_state(source, **identity)
        self.summary.resumed_at_line = state.line
        self.summary.imported, self.summary.rejected = state.imported, state.rejected
        with _rejects_file(source, state.rejects_bytes) as rejects, source.open("rb") as stream:
            records = self._records(stream, state)
            self.reporter.start(source.stat().st_size, state.offset)
            try:
                await self._pump(self._batches(records), state, rejects)
                state.done = True
            finally:
                self.reporter.stop()
                self._save(state, rejects)  # what is committed, done or not
        return self.summary

    async def _prepare_server(self) -> None:
        limits = await self.client.limits()
        self.max_documents = min(self.max_documents, limits.max_documents_per_upsert)
        self.max_bytes = min(self.max_bytes, limits.max_body_bytes - _ENVELOPE_BYTES)
        try:
            await self.client.get_collection(self.options.collection)
        except NotFound:
            if not self.options.create:
                raise ImportFailed(
                    f"collection '{self.options.collection}' does not exist: create it first, or pass --create "
                    "to make it with the server's default model"
                ) from None
            await self.client.create_collection(self.options.collection)

    def _records(self, stream: IO[bytes], state: ImportState) -> Iterator[Record]:
        options = self.options
        if options.format == "jsonl":
            stream.seek(state.offset)
            return read_jsonl(stream, options.mapping, offset=state.offset, line=state.line)
        header, header_end = csv_header(stream, options.delimiter)
        if state.csv_header is None:
            state.csv_header = header
        offset, line = (state.offset, state.line) if state.offset else (header_end, 1)
        stream.seek(offset)
        return read_csv(stream, options.mapping, header, offset=offset, line=line, delimiter=options.delimiter)

    def _batches(self, records: Iterator[Record]) -> Iterator[_Batch]:
        """Records grouped under the documents and bytes a request may hold; a document too big for any
        request is a reject here. Documents without an id get the hash of their content."""
        number, pending, documents, size = 0, list[Record](), 0, _ENVELOPE_BYTES
        for record in records:
            if record.document is not None:
                if "id" not in record.document:
                    try:
                        record.document["id"] = document_id(record.document)
                    except (msgspec.ValidationError, TypeError) as exc:  # a vector that is no array of numbers
                        record.reason = f"the vector cannot be read: {exc}"
                if record.reason is None and record.size + _ENVELOPE_BYTES > self.max_bytes:
                    record.reason = f"the document is {record.size:,} bytes; a request may hold {self.max_bytes:,}"
                    record.code = "too_large"
                full = documents == self.max_documents or size + record.size + 1 > self.max_bytes
                if record.reason is None and full:
                    yield _Batch(number, pending, pending[-1].end_offset, pending[-1].line)
                    number, pending, documents, size = number + 1, [], 0, _ENVELOPE_BYTES
            pending.append(record)
            if record.reason is None:
                documents, size = documents + 1, size + record.size + 1
        if pending:
            yield _Batch(number, pending, pending[-1].end_offset, pending[-1].line)

    async def _pump(self, batches: Iterator[_Batch], state: ImportState, rejects: IO[bytes]) -> None:
        """Send batches with `concurrency` in flight; commit them in file order as they complete."""
        in_flight: dict[int, tuple[_Batch, asyncio.Task[_Outcome]]] = {}
        finished: dict[int, _Outcome] = {}
        next_to_commit = [0]

        async def settle(wait_for: list[asyncio.Task[_Outcome]]) -> None:
            done, _ = await asyncio.wait(wait_for, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                outcome = task.result()  # a fatal error propagates from here
                del in_flight[outcome.batch.number]
                finished[outcome.batch.number] = outcome
            while next_to_commit[0] in finished:
                self._commit(finished.pop(next_to_commit[0]), state, rejects)
                next_to_commit[0] += 1

        try:
            for batch in batches:
                batch.ids = {record.document["id"] for record in batch.records if record.document and not record.reason}
                # A later line with an id in flight in another batch waits for it: the later line wins.
                while clashing := [task for other, task in in_flight.values() if other.ids & batch.ids]:
                    await settle(clashing)
                while len(in_flight) >= self.options.concurrency:
                    await settle([task for _, task in in_flight.values()])
                in_flight[batch.number] = (batch, asyncio.create_task(self._send(batch)))
            while in_flight:
                await settle([task for _, task in in_flight.values()])
        finally:
            for _, task in in_flight.values():
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*(task for _, task in in_flight.values()), return_exceptions=True)

    async def _send(self, batch: _Batch) -> _Outcome:
        outcome = _Outcome(batch)
        latest: dict[str, Record] = {}
        for record in batch.records:
            if record.reason is not None:
                outcome.rejects.append(_reject(record, record.reason, record.code))
            elif record.document is not None:
                # The same id twice in one request is a 422: the later line replaces the earlier, as it would
                # if they were sent one after the other.
                latest.pop(record.document["id"], None)
                latest[record.document["id"]] = record
        groups = [list(latest.values())] if latest else []
        while groups:
            group = groups.pop()
            try:
                result = await self.client.upsert(
                    self.options.collection,
                    [record.document for record in group if record.document is not None],
                    batch_size=len(group),
                    deterministic_ids=False,
                )
            except (BadRequest, ValidationFailed, PayloadTooLarge) as exc:
                groups.extend(_isolate(group, exc, outcome))
                continue
            outcome.accepted += len(group)
            outcome.inserted += result.inserted
            outcome.updated += result.updated
        outcome.accepted += sum(1 for r in batch.records if r.reason is None) - len(latest)
        return outcome

    def _commit(self, outcome: _Outcome, state: ImportState, rejects: IO[bytes]) -> None:
        for entry in sorted(outcome.rejects, key=lambda entry: int(entry["line"])):
            rejects.write(msgspec.json.encode(entry) + b"\n")
        summary = self.summary
        summary.imported += outcome.accepted
        summary.rejected += len(outcome.rejects)
        summary.inserted += outcome.inserted
        summary.updated += outcome.updated
        summary.this_run += outcome.accepted + len(outcome.rejects)
        state.offset, state.line = outcome.batch.end_offset, outcome.batch.end_line
        state.imported, state.rejected = summary.imported, summary.rejected
        if time.monotonic() - self.saved_at >= SAVE_INTERVAL_S:
            self._save(state, rejects)
        self.reporter.update(state.offset, summary.this_run, summary.rejected)

    def _save(self, state: ImportState, rejects: IO[bytes]) -> None:
        """Rejects on disk first, then the state that counts them: a kill between the two leaves rejects past
        `rejects_bytes`, which a rerun cuts off and writes again."""
        rejects.flush()
        os.fsync(rejects.fileno())
        state.rejects_bytes = rejects.tell()
        save_state(self.options.source, state)
        self.saved_at = time.monotonic()


def _isolate(group: list[Record], error: AkiDBError, outcome: _Outcome) -> list[list[Record]]:
    """What to send again after a 400/413/422: without the document the error names, or in halves."""
    match = _DOCUMENT_FIELD.match(error.field or "")
    index = int(match.group(1)) if match and not isinstance(error, PayloadTooLarge) else None
    if index is not None and index < len(group):
        outcome.rejects.append(_reject(group[index], error.detail, error.code or str(error.status)))
        rest = group[:index] + group[index + 1 :]
        return [rest] if rest else []
    if len(group) == 1:
        outcome.rejects.append(_reject(group[0], error.detail, error.code or str(error.status)))
        return []
    middle = len(group) // 2
    return [group[middle:], group[:middle]]


@contextlib.contextmanager
def _rejects_file(source: Path, keep_bytes: int) -> Iterator[IO[bytes]]:
    """The rejects file, cut to what the state counts (a kill may have left more) and opened for appending."""
    path = rejects_path(source)
    path.touch()
    with path.open("r+b") as stream:
        stream.truncate(keep_bytes)
        stream.seek(keep_bytes)
        yield stream
    if path.stat().st_size == 0:
        path.unlink(missing_ok=True)


def describe_failure(exc: BaseException) -> str:
    if isinstance(exc, ImportFailed | SourceError):
        return str(exc)
    if isinstance(exc, AkiDBError):
        return f"the server refused ({exc.status} {exc.code or ''}): {exc.detail}".replace(" )", ")")
    return f"{type(exc).__name__}: {exc}"

"""The `akidb import` and `akidb export` commands: arguments, and the exit code (0 all in, 2 some rejected,
1 a fatal error). They talk to a server over HTTP with akidb.client, so they need no server settings."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import msgspec

from akidb.client import AkiDBError, AsyncClient
from akidb.tools.exporter import ExportOptions, export
from akidb.tools.importer import Importer, ImportFailed, ImportOptions, describe_failure
from akidb.tools.progress import reporter
from akidb.tools.sources import FieldMap, SourceError, detect_format
from akidb.tools.state import StateError, forget, rejects_path, state_path


def _fail(message: str) -> int:
    print(f"akidb: {message}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    try:
        if args.command == "import":
            return asyncio.run(_import(args))
        return asyncio.run(_export(args))
    except KeyboardInterrupt:
        return _fail("interrupted")


def _client(args: argparse.Namespace) -> AsyncClient:
    return AsyncClient(args.url, api_key=args.api_key)


async def _import(args: argparse.Namespace) -> int:
    source = Path(args.file)
    format = detect_format(source.name, args.format)
    delimiter = args.delimiter or ("\t" if source.name.lower().endswith(".tsv") else ",")
    for name in ("batch_size", "batch_bytes", "concurrency"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            return _fail(f"--{name.replace('_', '-')} must be at least 1")
    extra = None if args.metadata_fields is None else tuple(f.strip() for f in args.metadata_fields.split(",") if f)
    mapping = FieldMap(args.id_field, args.text_field, args.vector_field, args.metadata_field, extra)
    options = ImportOptions(
        source, args.collection, format, mapping, args.batch_size, args.batch_bytes, args.concurrency, delimiter,
        args.create,
    )  # fmt: skip
    if args.restart:
        forget(source)
    async with _client(args) as client:
        importer = Importer(client, options, reporter(f"import {source.name}", quiet=args.quiet))
        try:
            summary = await importer.run(restart=args.restart)
        except (ImportFailed, SourceError, StateError, AkiDBError, OSError) as exc:
            done = importer.summary
            return _fail(
                f"import stopped: {describe_failure(exc)}. {done.imported:,} documents are in; "
                f"run the same command again to go on from line {_line(source)}"
            )
    if summary.already_done:
        print(
            f"{source} was already imported into '{args.collection}' ({_documents(summary.imported)}, "
            f"{summary.rejected:,} rejected); --restart imports it again"
        )
        return summary.exit_code
    resumed = f", resumed after line {summary.resumed_at_line:,}" if summary.resumed_at_line else ""
    print(
        f"imported {_documents(summary.imported)} into '{args.collection}' ({summary.inserted:,} new, "
        f"{summary.updated:,} replaced in this run{resumed}); {summary.rejected:,} rejected"
    )
    if summary.rejected:
        print(f"rejected documents and their reasons: {rejects_path(source)}")
    return summary.exit_code


def _documents(count: int) -> str:
    return f"{count:,} document" if count == 1 else f"{count:,} documents"


def _line(source: Path) -> str:
    try:
        state = msgspec.json.decode(state_path(source).read_bytes())
        return f"{int(state['line']) + 1:,}"
    except (OSError, msgspec.DecodeError, KeyError, TypeError, ValueError):
        return "1"


async def _export(args: argparse.Namespace) -> int:
    filter = None
    if args.filter:
        try:
            filter = msgspec.json.decode(args.filter)
        except msgspec.DecodeError as exc:
            return _fail(f"--filter is not valid JSON ({exc})")
        if not isinstance(filter, dict):
            return _fail("--filter must be a JSON object")
    if args.page_size < 1:
        return _fail("--page-size must be at least 1")
    output = Path(args.output) if args.output and args.output != "-" else None
    options = ExportOptions(args.collection, output, filter, args.include_vectors, args.page_size)
    async with _client(args) as client:
        try:
            written = await export(client, options, reporter(f"export {args.collection}", quiet=args.quiet))
        except (AkiDBError, OSError) as exc:
            return _fail(f"export stopped: {describe_failure(exc)}")
    if output is not None:
        print(f"exported {_documents(written)} from '{args.collection}' to {output}")
    return 0

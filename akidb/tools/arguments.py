"""The arguments of `akidb import` and `akidb export` (kept apart from the commands, so that `akidb serve`
does not import the client and the progress bar to build its parser)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NoReturn

# Client-side settings (like OPENAI_API_KEY), not server settings: config.py leaves them alone.
URL_ENV = "AKIDB_URL"
API_KEY_ENV = "AKIDB_API_KEY"
DEFAULT_URL = "http://127.0.0.1:8080"


def _with_server(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get(URL_ENV, DEFAULT_URL), help=f"the server (${URL_ENV})")
    parser.add_argument(
        "--api-key", default=os.environ.get(API_KEY_ENV), help=f"a key with the right role (${API_KEY_ENV})"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")


class _ToolParser(argparse.ArgumentParser):
    """A usage mistake exits 1 (a fatal error), not argparse's 2: to `akidb import`, 2 means that documents
    were rejected, and a script must be able to tell the two apart."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def add_parsers(commands: Any) -> None:
    """Add `import` and `export` to the CLI's subcommands."""
    imp = commands.add_parser("import", help="load a JSON Lines or CSV file into a collection (resumable)")
    imp.__class__ = _ToolParser
    imp.add_argument("file", help="JSON Lines (one document per line) or CSV with a header row")
    imp.add_argument("--collection", required=True)
    _with_server(imp)
    imp.add_argument("--format", choices=["jsonl", "csv"], help="default: from the file name (.csv/.tsv: csv)")
    imp.add_argument("--delimiter", help="CSV delimiter (default , or a tab for .tsv)")
    imp.add_argument("--id-field", default="id")
    imp.add_argument("--text-field", default="text")
    imp.add_argument("--vector-field", default="vector", help="an array of numbers (in CSV: a JSON array)")
    imp.add_argument("--metadata-field", default="metadata", help="a JSON object merged into the metadata")
    imp.add_argument(
        "--metadata-fields",
        help="comma-separated other fields to copy into the metadata (default: every other field)",
    )
    imp.add_argument("--batch-size", type=int, help="documents per request (default 256, at most the server's)")
    imp.add_argument("--batch-bytes", type=int, help="bytes per request (default 8 MiB, at most the server's)")
    imp.add_argument("--concurrency", type=int, default=2, help="requests in flight (default 2)")
    imp.add_argument("--create", action="store_true", help="create the collection if missing (default model)")
    imp.add_argument("--restart", action="store_true", help="forget the saved progress and start from the top")
    exp = commands.add_parser("export", help="write a collection as JSON Lines that akidb import reads")
    exp.__class__ = _ToolParser
    exp.add_argument("collection")
    _with_server(exp)
    exp.add_argument("--filter", help="a metadata filter (JSON), as in search")
    exp.add_argument("--include-vectors", action="store_true", help="add each document's vector")
    exp.add_argument("--output", "-o", help="a file (default: stdout)")
    exp.add_argument("--page-size", type=int, default=500, help="documents per request (default 500)")

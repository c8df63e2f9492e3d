"""The resume state of `akidb import`: how far into the file every document is acknowledged, beside the file.

It is rewritten atomically (temporary file, fsync, rename) after contiguous runs of acknowledged batches (at
most twice a second, and at the end), and only after the rejects of those batches are on disk, so a kill -9 at
any moment leaves a state that a rerun can trust: everything before `offset` is in the collection or in the
rejects file (whose length is `rejects_bytes`), nothing after it is counted anywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

STATE_SUFFIX = ".akidb-import.json"
REJECTS_SUFFIX = ".rejects.jsonl"
# The head of the file whose hash tells a rerun that the file is still the one it started on.
FINGERPRINT_BYTES = 64 * 1024


class ImportState(msgspec.Struct, kw_only=True):
    version: int = 1
    file: str
    collection: str
    format: str
    mapping: dict[str, Any]
    fingerprint: str
    fingerprint_bytes: int
    csv_header: list[str] | None = None
    # Every record before this byte (and line) is acknowledged by the server or written to the rejects file.
    offset: int = 0
    line: int = 0
    rejects_bytes: int = 0
    imported: int = 0
    rejected: int = 0
    done: bool = False
    updated_at: str = ""


class StateError(Exception):
    """The state file cannot be used for this run (a fatal error that names the way out)."""


def state_path(source: Path) -> Path:
    return source.with_name(source.name + STATE_SUFFIX)


def rejects_path(source: Path) -> Path:
    return source.with_name(source.name + REJECTS_SUFFIX)


def fingerprint(source: Path, length: int) -> str:
    with source.open("rb") as stream:
        return hashlib.sha256(stream.read(length)).hexdigest()


def fresh_state(source: Path, *, collection: str, format: str, mapping: dict[str, Any]) -> ImportState:
    length = min(FINGERPRINT_BYTES, source.stat().st_size)
    return ImportState(
        file=str(source.resolve()),
        collection=collection,
        format=format,
        mapping=mapping,
        fingerprint=fingerprint(source, length),
        fingerprint_bytes=length,
    )


def load_state(source: Path, *, collection: str, format: str, mapping: dict[str, Any]) -> ImportState | None:
    """The saved state for this file, checked against this run; None if there is none."""
    path = state_path(source)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        state = msgspec.json.decode(raw, type=ImportState)
    except msgspec.DecodeError as exc:
        raise StateError(f"the state file {path} cannot be read ({exc}): pass --restart to start over") from exc
    if state.collection != collection:
        raise StateError(
            f"{path} is the state of an import into '{state.collection}', not '{collection}': "
            "pass --restart to start over"
        )
    if state.format != format or state.mapping != mapping:
        raise StateError(f"{path} was written with another format or field mapping: pass --restart to start over")
    size = source.stat().st_size
    if size < state.offset or fingerprint(source, state.fingerprint_bytes) != state.fingerprint:
        raise StateError(f"{source} has changed since {path} was written: pass --restart to start over")
    return state


def save_state(source: Path, state: ImportState) -> None:
    state.updated_at = datetime.now(UTC).isoformat(timespec="seconds")
    write_atomically(state_path(source), msgspec.json.format(msgspec.json.encode(state)) + b"\n")


def write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)
    with contextlib.suppress(OSError):  # not every file system lets a folder be fsynced
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def forget(source: Path) -> None:
    """--restart: no state, no rejects."""
    for path in (state_path(source), rejects_path(source)):
        path.unlink(missing_ok=True)

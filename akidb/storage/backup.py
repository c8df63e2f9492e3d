"""`akidb backup` and `akidb restore`: a consistent copy of a SQLite database, taken while a server runs.

The copy goes through SQLite's online backup API from a read-only connection: under WAL it reads one
snapshot (every transaction committed before it began, none after) and never blocks the server's writers,
so no lock is taken on the database (`<db>.lock` stays the running server's). The index files are left out:
a server rebuilds them from the database on its first start. PostgreSQL holds everything itself, so its
backups are pg_dump's job.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from akidb.storage.db import DatabaseInUse, claim_storage

DATABASE_NAME = "akidb.sqlite3"
_BUSY_TIMEOUT_S = 30.0
_REQUIRED_TABLES = ("collections", "documents")


class BackupError(Exception):
    """A backup or restore that cannot be done as asked; the CLI prints it as one line and exits 2."""


@dataclass(frozen=True)
class CopySummary:
    path: Path
    size_bytes: int
    collections: int
    documents: int

    def describe(self) -> str:
        return (
            f"{self.path}: {_human_size(self.size_bytes)}, {self.collections} collection"
            f"{'' if self.collections == 1 else 's'}, {self.documents} document{'' if self.documents == 1 else 's'}"
        )


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def sqlite_path(url: str, *, remedy: str) -> Path:
    """The database file of a SQLite URL; BackupError naming `remedy` for any other database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        raise BackupError(
            f"storage.url is a {parsed.get_backend_name()} database, which holds everything itself (the indexes "
            f"rebuild from it): {remedy}"
        )
    if not parsed.database or parsed.database == ":memory:":
        raise BackupError("storage.url is an in-memory SQLite database: there is no file to copy")
    return Path(parsed.database).resolve()


def _connect_read_only(path: Path) -> sqlite3.Connection:
    # mode=ro: a wrong path is an error rather than a new, empty database.
    connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=_BUSY_TIMEOUT_S)
    connection.execute(f"PRAGMA busy_timeout={int(_BUSY_TIMEOUT_S * 1000)}")
    return connection


def _copy(source: Path, target: Path) -> None:
    """Copy the database at `source` into the new file `target` (one snapshot), as a self-contained file."""
    try:
        reader = _connect_read_only(source)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {source} as a SQLite database ({exc})") from exc
    try:
        writer = sqlite3.connect(target)
        try:
            # All pages in one step: one read transaction, so one consistent snapshot of the source.
            reader.backup(writer, pages=-1)
            # A rollback-journal file, so the copy is this one file (no -wal beside it); a server turns WAL
            # back on when it opens the database.
            writer.execute("PRAGMA journal_mode=DELETE")
        finally:
            writer.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot copy {source} ({exc})") from exc
    finally:
        reader.close()


def _check(path: Path, *, what: str) -> tuple[int, int]:
    """Run integrity_check on the database at `path` and return its (collections, documents) counts."""
    try:
        connection = _connect_read_only(path)
    except sqlite3.Error as exc:
        raise BackupError(f"{what} {path} is not a SQLite database ({exc})") from exc
    try:
        result = [row[0] for row in connection.execute("PRAGMA integrity_check")]
        if result != ["ok"]:
            raise BackupError(f"{what} {path} fails SQLite's integrity check: {'; '.join(map(str, result[:3]))}")
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = [table for table in _REQUIRED_TABLES if table not in tables]
        if missing:
            raise BackupError(f"{what} {path} is not an akidb database (it has no `{missing[0]}` table)")
        collections = int(connection.execute("SELECT count(*) FROM collections").fetchone()[0])
        documents = int(connection.execute("SELECT count(*) FROM documents").fetchone()[0])
    except sqlite3.Error as exc:
        raise BackupError(f"{what} {path} cannot be read as a SQLite database ({exc})") from exc
    finally:
        connection.close()
    return collections, documents


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(temporary: Path, final: Path) -> None:
    """Make `temporary` durable and give it its final name atomically (no half-written file under it)."""
    _fsync(temporary)
    os.replace(temporary, final)
    with contextlib.suppress(OSError):  # not every file system lets a folder be fsynced
        _fsync(final.parent)


def _temporary_beside(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial-{os.getpid()}")


def _remove_quietly(path: Path) -> None:
    for leftover in (path, path.with_name(path.name + "-journal")):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


def backup(url: str, destination: Path) -> CopySummary:
    """Copy the SQLite database of `url` to `destination` (a new file, or a folder to hold akidb.sqlite3),
    while a server may be writing to it. The index files are not copied: they rebuild."""
    source = sqlite_path(url, remedy="back it up with pg_dump (see README, Backups)")
    if not source.is_file():
        raise BackupError(f"there is no database at {source}: check --data-dir or storage.url")
    target = destination / DATABASE_NAME if destination.is_dir() else destination
    target = target.resolve()
    if target == source:
        raise BackupError(f"{target} is the live database itself: choose a backup path outside it")
    if target.exists():
        raise BackupError(f"{target} already exists: remove it or choose another name")
    if not target.parent.is_dir():
        raise BackupError(f"{target.parent} is not a folder: create it first")
    temporary = _temporary_beside(target)
    try:
        _copy(source, temporary)
        collections, documents = _check(temporary, what="the copy")
        _publish(temporary, target)
    except OSError as exc:
        raise BackupError(f"cannot write {target} ({exc.strerror or exc})") from exc
    finally:
        _remove_quietly(temporary)
    return CopySummary(target, target.stat().st_size, collections, documents)


def restore(source: Path, url: str, data_dir: Path, index_dir: Path) -> CopySummary:
    """Copy the backup at `source` into an empty (or missing) data directory as the database of `url`.

    The index directory is left empty: the first server start rebuilds every index from the database."""
    target = sqlite_path(url, remedy="restore it with pg_restore or psql (see README, Backups)")
    source = source.resolve()
    if source.is_dir():
        source = source / DATABASE_NAME
    if not source.is_file():
        raise BackupError(f"there is no backup at {source}")
    _check(source, what="the backup")
    data_dir = data_dir.resolve()
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise BackupError(
            f"the data directory {data_dir} is not empty: restore into a new or empty folder (--data-dir)"
        )
    if target.exists():
        raise BackupError(f"{target} already exists: restore into a new or empty data directory")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Hold what a server would hold, so none starts on the half-restored directory.
        claims = claim_storage(url, index_dir)
    except DatabaseInUse as exc:
        raise BackupError(str(exc)) from exc
    except OSError as exc:
        raise BackupError(f"cannot create {target.parent} ({exc.strerror or exc})") from exc
    temporary = _temporary_beside(target)
    try:
        if target.exists():
            raise BackupError(f"{target} already exists: restore into a new or empty data directory")
        _copy(source, temporary)
        collections, documents = _check(temporary, what="the restored copy")
        _publish(temporary, target)
    except OSError as exc:
        raise BackupError(f"cannot write {target} ({exc.strerror or exc})") from exc
    finally:
        _remove_quietly(temporary)
        for claim in claims:
            claim.close()
    return CopySummary(target, target.stat().st_size, collections, documents)

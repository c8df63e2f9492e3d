"""What followers read: every collection's head, a collection's rows in one snapshot (to open it), the writes
after a seq (to catch up), and each process's progress, which decides when tombstones may go.

Seq numbers of one collection commit in order (writers hold the collection row's lock), so a snapshot that
shows `last_seq = n` shows every write up to n and none after it. On PostgreSQL a snapshot spanning several
statements needs REPEATABLE READ; SQLite's read transaction already is one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from akidb.storage.db import WRITE_OPTION
from akidb.storage.models import CollectionRow, DocumentRow, ReplicaProgressRow, TombstoneRow
from akidb.storage.records import Changes, CollectionHead, StoredRow

_collections = cast(Table, CollectionRow.__table__)
_documents = cast(Table, DocumentRow.__table__)
_tombstones = cast(Table, TombstoneRow.__table__)
_progress = cast(Table, ReplicaProgressRow.__table__)
_ROW_COLUMNS = (
    _documents.c.label,
    _documents.c.id,
    _documents.c.text,
    _documents.c.metadata,
    _documents.c.vector,
    _documents.c.seq,
)


def _stored(row: Any) -> StoredRow:
    return StoredRow(row.label, row.id, row.text, row.metadata or {}, row.vector, row.seq)


@dataclass(frozen=True, slots=True)
class OpeningHead:
    last_seq: int
    purged_seq: int
    document_count: int


class Snapshot:
    """Reads that all see the database as of one moment."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def head(self, collection_id: int) -> OpeningHead | None:
        row = self.conn.execute(
            select(_collections.c.last_seq, _collections.c.purged_seq).where(_collections.c.id == collection_id)
        ).first()
        if row is None:
            return None
        count = self.conn.execute(
            select(func.count()).select_from(_documents).where(_documents.c.collection_id == collection_id)
        ).scalar_one()
        return OpeningHead(int(row.last_seq), int(row.purged_seq), int(count))

    def rows(self, collection_id: int, batch: int = 5000) -> Iterator[list[StoredRow]]:
        """Every live row, in batches."""
        result = self.conn.execution_options(yield_per=batch).execute(
            select(*_ROW_COLUMNS).where(_documents.c.collection_id == collection_id)
        )
        for part in result.partitions(batch):
            yield [_stored(row) for row in part]


class ChangeFeed:
    """All calls block."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = engine.execution_options(**{WRITE_OPTION: True})
        self._postgres = engine.dialect.name == "postgresql"

    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        with self.engine.connect() as conn:
            if self._postgres:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield Snapshot(conn)

    def heads(self) -> list[CollectionHead]:
        columns = (
            _collections.c.id,
            _collections.c.name,
            _collections.c.last_seq,
            _collections.c.purged_seq,
            _collections.c.hnsw_ef_search,
        )
        with self.engine.connect() as conn:
            rows = conn.execute(select(*columns)).all()
        return [CollectionHead(r.id, r.name, r.last_seq, r.purged_seq, r.hnsw_ef_search) for r in rows]

    def changes(self, collection_id: int, after: int, until: int | None = None, limit: int = 2000) -> Changes | None:
        """Writes with seq in (after, until] (until: the collection's last seq), at most `limit` rows: when
        there are more, `until` comes back lowered to the last row's seq and `more` is set. Rows come as they
        stand in the snapshot, so only a batch that reaches the collection's last seq gives its exact state
        there; the earlier ones lack the documents rewritten after them. None if the collection is gone."""
        with self.snapshot() as snap:
            conn = snap.conn
            row = conn.execute(
                select(_collections.c.last_seq, _collections.c.purged_seq).where(_collections.c.id == collection_id)
            ).first()
            if row is None:
                return None
            target = int(row.last_seq) if until is None else min(until, int(row.last_seq))
            if target <= after:
                return Changes(until=after, purged_seq=int(row.purged_seq), tombstones=[], rows=[], more=False)
            rows = [
                _stored(r)
                for r in conn.execute(
                    select(*_ROW_COLUMNS)
                    .where(
                        _documents.c.collection_id == collection_id,
                        _documents.c.seq > after,
                        _documents.c.seq <= target,
                    )
                    .order_by(_documents.c.seq)
                    .limit(limit)
                )
            ]
            more = len(rows) == limit and rows[-1].seq < target
            if more:
                target = rows[-1].seq
            tombstones = list(
                conn.execute(
                    select(_tombstones.c.label).where(
                        _tombstones.c.collection_id == collection_id,
                        _tombstones.c.seq > after,
                        _tombstones.c.seq <= target,
                    )
                ).scalars()
            )
        return Changes(until=target, purged_seq=int(row.purged_seq), tombstones=tombstones, rows=rows, more=more)

    # --- progress and tombstones -------------------------------------------------------------------

    def heartbeat(self, replica_id: str, applied: Mapping[int, int]) -> None:
        """Record how far this process has applied each collection it holds open, and that it is alive."""
        now = datetime.now(UTC)
        with self._writer.begin() as conn:
            existing = set(
                conn.execute(select(_progress.c.collection_id).where(_progress.c.replica_id == replica_id)).scalars()
            )
            for collection_id, seq in applied.items():
                values = {"applied_seq": seq, "heartbeat_at": now}
                if collection_id in existing:
                    conn.execute(
                        update(_progress)
                        .where(_progress.c.replica_id == replica_id, _progress.c.collection_id == collection_id)
                        .values(**values)
                    )
                else:
                    try:
                        with conn.begin_nested():
                            conn.execute(
                                insert(_progress).values(replica_id=replica_id, collection_id=collection_id, **values)
                            )
                    except IntegrityError:
                        pass  # the collection was deleted meanwhile
            gone = existing - set(applied)
            if gone:
                conn.execute(
                    delete(_progress).where(_progress.c.replica_id == replica_id, _progress.c.collection_id.in_(gone))
                )

    def forget(self, replica_id: str) -> None:
        """A process that stops cleanly holds nothing back."""
        with self._writer.begin() as conn:
            conn.execute(delete(_progress).where(_progress.c.replica_id == replica_id))

    def purge_tombstones(self, *, timeout_s: float) -> int:
        """Delete every tombstone that each live process (heartbeat within `timeout_s`) has applied, and
        forget processes silent for longer. Returns how many tombstones went."""
        cutoff = datetime.now(UTC) - timedelta(seconds=timeout_s)
        purged = 0
        with self._writer.begin() as conn:
            conn.execute(delete(_progress).where(_progress.c.heartbeat_at < cutoff))
            floors = conn.execute(
                select(_progress.c.collection_id, func.min(_progress.c.applied_seq)).group_by(_progress.c.collection_id)
            ).all()
            for collection_id, floor in floors:
                doomed = (_tombstones.c.collection_id == collection_id) & (_tombstones.c.seq <= floor)
                # The highest seq actually purged, not the floor: a process that opened the collection after
                # that seq missed nothing, and must not be sent to reopen it.
                highest = conn.execute(select(func.max(_tombstones.c.seq)).where(doomed)).scalar_one_or_none()
                if highest is None:
                    continue
                purged += conn.execute(delete(_tombstones).where(doomed)).rowcount
                conn.execute(
                    update(_collections)
                    .where(_collections.c.id == collection_id, _collections.c.purged_seq < highest)
                    .values(purged_seq=highest)
                )
        return purged

    def progress(self) -> list[tuple[str, int, int, datetime]]:
        """(replica, collection id, applied seq, heartbeat) rows, for tests and operators."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(_progress).order_by(_progress.c.replica_id, _progress.c.collection_id)).all()
        return [(r.replica_id, r.collection_id, r.applied_seq, r.heartbeat_at) for r in rows]

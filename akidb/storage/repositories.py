"""Intent-named queries. Returns plain records, never ORM objects; knows nothing of HTTP or models."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import msgspec
import numpy as np
from sqlalchemy import Engine, Table, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from akidb.errors import AlreadyExists, NotFound, collection_not_found
from akidb.storage.db import WRITE_OPTION
from akidb.storage.models import CollectionRow, DocumentRow, TombstoneRow
from akidb.storage.records import (
    CollectionRecord,
    DeleteOutcome,
    DocumentRecord,
    HnswParams,
    NewDocument,
    UpsertOutcome,
    Vector,
    blob_to_vector,
    vector_to_blob,
)

_collections = cast(Table, CollectionRow.__table__)
_documents = cast(Table, DocumentRow.__table__)
_tombstones = cast(Table, TombstoneRow.__table__)
# Stay well under every database's limit on bound parameters.
_CHUNK = 500
_JSON = msgspec.json.Encoder()


def _vector_blobs(vectors: Sequence[Any]) -> list[bytes]:
    """Each vector as its blob (vector_to_blob), from one little-endian float32 matrix when they all fit it."""
    if vectors and all(len(np.shape(v)) == 1 for v in vectors) and len({len(v) for v in vectors}) == 1:
        matrix = np.ascontiguousarray(np.stack(vectors), dtype="<f4")
        return [row.tobytes() for row in matrix]
    return [vector_to_blob(v) for v in vectors]


def _utc(value: datetime) -> datetime:
    # SQLite hands timestamps back without a zone; they were written in UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _collection_record(row: Any) -> CollectionRecord:
    return CollectionRecord(
        id=row.id,
        uid=row.uid,
        name=row.name,
        embedding_model=row.embedding_model,
        dimension=row.dimension,
        metric=row.metric,
        hnsw=HnswParams(row.hnsw_m, row.hnsw_ef_construction, row.hnsw_ef_search),
        metadata=row.metadata or {},
        last_seq=row.last_seq,
        created_at=_utc(row.created_at),
        updated_at=_utc(row.updated_at),
    )


class Store:
    """Every database operation the gateway needs, each one a transaction. All calls block."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = engine.execution_options(**{WRITE_OPTION: True})

    # --- collections -------------------------------------------------------------------------------

    def create_collection(
        self,
        *,
        name: str,
        embedding_model: str | None,
        dimension: int,
        metric: str,
        hnsw: HnswParams,
        metadata: dict[str, Any],
    ) -> CollectionRecord:
        now = datetime.now(UTC)
        values = {
            "uid": uuid.uuid4().hex,
            "name": name,
            "embedding_model": embedding_model,
            "dimension": dimension,
            "metric": metric,
            "hnsw_m": hnsw.m,
            "hnsw_ef_construction": hnsw.ef_construction,
            "hnsw_ef_search": hnsw.ef_search,
            "metadata": metadata,
            "last_seq": 0,
            "next_label": 0,
            "created_at": now,
            "updated_at": now,
        }
        try:
            with self._writer.begin() as conn:
                conn.execute(insert(_collections).values(**values))
        except IntegrityError:
            raise AlreadyExists(f"collection '{name}' already exists") from None
        return self.get_collection(name)

    def get_collection(self, name: str) -> CollectionRecord:
        with self.engine.connect() as conn:
            row = conn.execute(select(_collections).where(_collections.c.name == name)).first()
        if row is None:
            raise collection_not_found(name)
        return _collection_record(row)

    def list_collections(self) -> list[CollectionRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(_collections).order_by(_collections.c.name)).all()
        return [_collection_record(row) for row in rows]

    def update_collection(
        self, name: str, *, metadata: dict[str, Any] | None, ef_search: int | None
    ) -> CollectionRecord:
        values: dict[str, Any] = {"updated_at": datetime.now(UTC)}
        if metadata is not None:
            values["metadata"] = metadata
        if ef_search is not None:
            values["hnsw_ef_search"] = ef_search
        with self._writer.begin() as conn:
            result = conn.execute(update(_collections).where(_collections.c.name == name).values(**values))
        if result.rowcount == 0:
            raise collection_not_found(name)
        return self.get_collection(name)

    def delete_collection(self, name: str) -> CollectionRecord:
        with self._writer.begin() as conn:
            row = conn.execute(select(_collections).where(_collections.c.name == name)).first()
            if row is None:
                raise collection_not_found(name)
            # Explicit deletes too, so a database without ON DELETE CASCADE support is clean as well.
            conn.execute(delete(_documents).where(_documents.c.collection_id == row.id))
            conn.execute(delete(_tombstones).where(_tombstones.c.collection_id == row.id))
            conn.execute(delete(_collections).where(_collections.c.id == row.id))
        return _collection_record(row)

    def count_documents(self, collection_id: int) -> int:
        with self.engine.connect() as conn:
            count = conn.execute(
                select(func.count()).select_from(_documents).where(_documents.c.collection_id == collection_id)
            ).scalar_one()
        return int(count)

    # --- documents ---------------------------------------------------------------------------------

    def upsert_documents(
        self,
        collection_id: int,
        documents: Sequence[NewDocument],
        before: Callable[[int], None] = lambda last_seq: None,
    ) -> UpsertOutcome:
        """Insert or replace, all in one transaction. Existing ids keep their label. `before(last_seq)` runs
        once the collection row is locked: the caller applies everything up to that seq first."""
        with self._writer.begin() as conn:
            # The collection row's lock first: on PostgreSQL two processes' writes to one collection take their
            # seq numbers in commit order (SQLite's BEGIN IMMEDIATE already serialises writers).
            head = conn.execute(
                select(_collections.c.last_seq, _collections.c.next_label)
                .where(_collections.c.id == collection_id)
                .with_for_update()
            ).first()
            if head is None:
                raise NotFound("the collection was deleted while the upsert ran")
            before(head.last_seq)
            existing: dict[str, int] = {}
            ids = [doc.id for doc in documents]
            for chunk in _chunks(ids):
                rows = conn.execute(
                    select(_documents.c.id, _documents.c.label).where(
                        _documents.c.collection_id == collection_id, _documents.c.id.in_(chunk)
                    )
                )
                existing.update({row.id: row.label for row in rows})
            seq, next_label = head.last_seq, head.next_label
            labels: list[int] = []
            is_new: list[bool] = []
            inserts: list[tuple[Any, ...]] = []
            updates: list[tuple[Any, ...]] = []
            # Rows as the driver takes them, one executemany per statement: SQLAlchemy's per-row parameter
            # processing and json.dumps cost more than the statements themselves (~12 of 30 ms per 100 rows).
            blobs = _vector_blobs([doc.vector for doc in documents])
            for doc, blob in zip(documents, blobs, strict=True):
                seq += 1
                metadata = _JSON.encode(doc.metadata).decode()
                label = existing.get(doc.id)
                if label is None:
                    label = next_label
                    next_label += 1
                    inserts.append((collection_id, doc.id, label, doc.text, metadata, blob, seq))
                else:
                    updates.append((doc.text, metadata, blob, seq, collection_id, doc.id))
                labels.append(label)
                is_new.append(label >= head.next_label)
            mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
            if inserts:
                conn.exec_driver_sql(
                    'INSERT INTO documents (collection_id, id, label, text, "metadata", vector, seq) '
                    f"VALUES ({', '.join([mark] * 7)})",
                    inserts,
                )
            if updates:
                conn.exec_driver_sql(
                    f'UPDATE documents SET text = {mark}, "metadata" = {mark}, vector = {mark}, seq = {mark} '
                    f"WHERE collection_id = {mark} AND id = {mark}",
                    updates,
                )
            conn.execute(
                update(_collections)
                .where(_collections.c.id == collection_id)
                .values(last_seq=seq, next_label=next_label)
            )
        return UpsertOutcome(
            labels=labels,
            is_new=is_new,
            inserted=len(inserts),
            updated=len(updates),
            last_seq=seq,
            base_seq=head.last_seq,
        )

    def delete_documents(
        self, collection_id: int, choose: Sequence[str] | Callable[[int], Sequence[str]]
    ) -> DeleteOutcome:
        """Delete these ids, or the ids `choose(last_seq)` names once the collection row is locked: a caller
        that selects from its own state brings it up to that seq first, so nothing committed is missed."""
        with self._writer.begin() as conn:
            last_seq = conn.execute(
                select(_collections.c.last_seq).where(_collections.c.id == collection_id).with_for_update()
            ).scalar_one_or_none()
            if last_seq is None:
                raise NotFound("the collection was deleted while the delete ran")
            ids = choose(last_seq) if callable(choose) else choose
            base_seq = last_seq
            labels: list[int] = []
            for chunk in _chunks(list(dict.fromkeys(ids))):
                found = conn.execute(
                    select(_documents.c.label).where(
                        _documents.c.collection_id == collection_id, _documents.c.id.in_(chunk)
                    )
                ).scalars()
                labels.extend(found)
                conn.execute(
                    delete(_documents).where(_documents.c.collection_id == collection_id, _documents.c.id.in_(chunk))
                )
            if labels:
                tombstones = []
                for label in labels:
                    last_seq += 1
                    tombstones.append({"collection_id": collection_id, "label": label, "seq": last_seq})
                conn.execute(insert(_tombstones), tombstones)
                conn.execute(update(_collections).where(_collections.c.id == collection_id).values(last_seq=last_seq))
        return DeleteOutcome(labels=labels, last_seq=last_seq, base_seq=base_seq)

    def get_document(self, collection_id: int, doc_id: str, *, with_vector: bool) -> DocumentRecord:
        columns = [
            _documents.c.id,
            _documents.c.label,
            _documents.c.text,
            _documents.c.metadata,
            _documents.c.seq,
        ]
        if with_vector:
            columns.append(_documents.c.vector)
        with self.engine.connect() as conn:
            row = conn.execute(
                select(*columns).where(_documents.c.collection_id == collection_id, _documents.c.id == doc_id)
            ).first()
        if row is None:
            raise NotFound(f"document '{doc_id}' does not exist")
        return self._document(row, with_vector)

    def list_documents(
        self, collection_id: int, *, after_id: str | None, limit: int, with_vector: bool
    ) -> list[DocumentRecord]:
        columns = [
            _documents.c.id,
            _documents.c.label,
            _documents.c.text,
            _documents.c.metadata,
            _documents.c.seq,
        ]
        if with_vector:
            columns.append(_documents.c.vector)
        # Code point order on every database: SQLite's BINARY collation is; PostgreSQL's "C" collation is.
        doc_id = _documents.c.id.collate("C") if self.engine.dialect.name == "postgresql" else _documents.c.id
        query = select(*columns).where(_documents.c.collection_id == collection_id)
        if after_id is not None:
            query = query.where(doc_id > after_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(doc_id).limit(limit)).all()
        return [self._document(row, with_vector) for row in rows]

    def texts_by_label(
        self, collection_id: int, labels: Sequence[int], *, with_text: bool, with_vector: bool
    ) -> dict[int, tuple[str | None, Vector | None]]:
        """What only the database holds of k-NN hits (search takes ids and metadata from memory): (text, vector)
        per label that still has a row, each asked-for column or None. One query on a pooled DBAPI connection."""
        if not labels:
            return {}
        columns = ["label", "text" if with_text else "NULL", "vector" if with_vector else "NULL"]
        return {
            label: (text, None if blob is None else blob_to_vector(blob))
            for label, text, blob in self._rows_where_in(collection_id, columns, "label", labels)
        }

    def _rows_where_in(
        self, collection_id: int, columns: Sequence[str], key: str, keys: Sequence[int] | Sequence[str]
    ) -> Iterator[tuple[Any, ...]]:
        """Rows of `columns` whose `key` is among `keys`, in chunks of IN lists, on a pooled DBAPI connection
        (a raw cursor: these reads sit on the search and get paths, where SQLAlchemy Core's cost showed)."""
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        connection = self.engine.raw_connection()
        try:
            cursor = connection.cursor()
            for chunk in _chunks(list(keys)):
                cursor.execute(
                    f"SELECT {', '.join(columns)} FROM documents "
                    f"WHERE collection_id = {mark} AND {key} IN ({', '.join([mark] * len(chunk))})",
                    [collection_id, *chunk],
                )
                yield from cursor.fetchall()
            cursor.close()
        finally:
            connection.close()  # back to the pool

    def documents_by_id(
        self,
        collection_id: int,
        ids: Sequence[str],
        *,
        with_text: bool,
        with_metadata: bool,
        with_vector: bool,
    ) -> dict[int, DocumentRecord]:
        """The rows of these ids (those that exist), by label."""
        return self._documents_where(
            collection_id, "id", ids, with_text=with_text, with_metadata=with_metadata, with_vector=with_vector
        )

    def _documents_where(
        self,
        collection_id: int,
        key: str,
        keys: Sequence[int] | Sequence[str],
        *,
        with_text: bool,
        with_metadata: bool,
        with_vector: bool,
    ) -> dict[int, DocumentRecord]:
        if not keys:
            return {}
        columns = ["id", "label", "seq"]
        if with_text:
            columns.append("text")
        if with_metadata:
            columns.append('"metadata"')
        if with_vector:
            columns.append("vector")
        found: dict[int, DocumentRecord] = {}
        for row in self._rows_where_in(collection_id, columns, key, keys):
            values = dict(zip(("id", "label", "seq", *(c.strip('"') for c in columns[3:])), row, strict=True))
            metadata = values.get("metadata")
            if isinstance(metadata, str | bytes):
                metadata = json.loads(metadata)
            found[values["label"]] = DocumentRecord(
                id=values["id"],
                label=values["label"],
                text=values["text"] if with_text else None,
                metadata=(metadata or {}) if with_metadata else {},
                vector=blob_to_vector(values["vector"]) if with_vector else None,
                seq=values["seq"],
            )
        return found

    @staticmethod
    def _document(row: Any, with_vector: bool) -> DocumentRecord:
        return DocumentRecord(
            id=row.id,
            label=row.label,
            text=row.text,
            metadata=row.metadata or {},
            vector=blob_to_vector(row.vector) if with_vector else None,
            seq=row.seq,
        )

    def last_seq(self, collection_id: int) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(
                select(_collections.c.last_seq).where(_collections.c.id == collection_id)
            ).scalar_one_or_none()
        if value is None:
            raise NotFound("collection does not exist")
        return int(value)

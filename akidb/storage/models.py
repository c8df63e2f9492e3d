"""Tables. Vectors are float32 blobs; `seq` orders every write so an index can catch up from its checkpoint."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

MAX_DOCUMENT_ID_LENGTH = 512
# Documents' metadata: JSON text on SQLite, JSONB on PostgreSQL (binary, and what its JSON operators index).
DocumentMetadata = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class CollectionRow(Base):
    __tablename__ = "collections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # Names index folders, so a deleted and re-created collection never meets old files.
    uid: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    embedding_model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    dimension: Mapped[int] = mapped_column(Integer)
    metric: Mapped[str] = mapped_column(String(8))
    hnsw_m: Mapped[int] = mapped_column(Integer)
    hnsw_ef_construction: Mapped[int] = mapped_column(Integer)
    hnsw_ef_search: Mapped[int] = mapped_column(Integer)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    # Highest seq handed out; the next write gets last_seq + 1.
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    # hnswlib labels are never reused, so a tombstone can never hit a newer document.
    next_label: Mapped[int] = mapped_column(BigInteger, default=0)
    # Tombstones up to this seq are gone: a process that has applied less must reopen the collection.
    purged_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DocumentRow(Base):
    __tablename__ = "documents"
    __table_args__ = (
        UniqueConstraint("collection_id", "label", name="uq_documents_collection_label"),
        # A tripwire as well as the catch-up index: two writers can never hand out one seq twice.
        UniqueConstraint("collection_id", "seq", name="uq_documents_collection_seq"),
    )

    collection_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(MAX_DOCUMENT_ID_LENGTH), primary_key=True)
    label: Mapped[int] = mapped_column(BigInteger)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", DocumentMetadata)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    seq: Mapped[int] = mapped_column(BigInteger)


class TombstoneRow(Base):
    """A deleted document's label, kept until every live process has applied its seq (see ReplicaProgressRow)."""

    __tablename__ = "tombstones"
    __table_args__ = (UniqueConstraint("collection_id", "seq", name="uq_tombstones_collection_seq"),)

    collection_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True
    )
    label: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)


class ReplicaProgressRow(Base):
    """How far one serving process has applied one collection, and when it last said so. Tombstones stay
    until every process with a recent heartbeat has applied them."""

    __tablename__ = "replica_progress"

    replica_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    collection_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True
    )
    applied_seq: Mapped[int] = mapped_column(BigInteger)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApiKeyRow(Base):
    """An API key: only the SHA-256 of the whole key is kept. Revoked keys stay, marked, for the record."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    # Collection names or globs the key is limited to; null: every collection.
    collections: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

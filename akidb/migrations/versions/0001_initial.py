"""Initial schema: collections, documents, tombstones.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "collections",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("uid", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("embedding_model", sa.String(length=200), nullable=True),
        sa.Column("dimension", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(length=8), nullable=False),
        sa.Column("hnsw_m", sa.Integer(), nullable=False),
        sa.Column("hnsw_ef_construction", sa.Integer(), nullable=False),
        sa.Column("hnsw_ef_search", sa.Integer(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("next_label", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_collections")),
        sa.UniqueConstraint("name", name=op.f("uq_collections_name")),
        sa.UniqueConstraint("uid", name=op.f("uq_collections_uid")),
    )
    op.create_table(
        "documents",
        sa.Column("collection_id", sa.Integer(), nullable=False),
        sa.Column("id", sa.String(length=512), nullable=False),
        sa.Column("label", sa.BigInteger(), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["collection_id"],
            ["collections.id"],
            name=op.f("fk_documents_collection_id_collections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("collection_id", "id", name=op.f("pk_documents")),
        sa.UniqueConstraint("collection_id", "label", name="uq_documents_collection_label"),
    )
    op.create_index("ix_documents_collection_seq", "documents", ["collection_id", "seq"], unique=False)
    op.create_table(
        "tombstones",
        sa.Column("collection_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["collection_id"],
            ["collections.id"],
            name=op.f("fk_tombstones_collection_id_collections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("collection_id", "label", name=op.f("pk_tombstones")),
    )
    op.create_index("ix_tombstones_collection_seq", "tombstones", ["collection_id", "seq"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_tombstones_collection_seq", table_name="tombstones")
    op.drop_table("tombstones")
    op.drop_index("ix_documents_collection_seq", table_name="documents")
    op.drop_table("documents")
    op.drop_table("collections")

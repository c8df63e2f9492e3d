"""Several processes on one database: each one's progress per collection (with a heartbeat), and how far
each collection's tombstones have been purged.

Revision ID: 0005_replicas
Revises: 0004_unique_seq
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_replicas"
down_revision: str | None = "0004_unique_seq"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("collections") as batch:
        batch.add_column(sa.Column("purged_seq", sa.BigInteger(), nullable=False, server_default="0"))
    op.create_table(
        "replica_progress",
        sa.Column("replica_id", sa.String(100), nullable=False),
        sa.Column("collection_id", sa.Integer(), nullable=False),
        sa.Column("applied_seq", sa.BigInteger(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["collection_id"],
            ["collections.id"],
            name=op.f("fk_replica_progress_collection_id_collections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("replica_id", "collection_id", name=op.f("pk_replica_progress")),
    )


def downgrade() -> None:
    op.drop_table("replica_progress")
    with op.batch_alter_table("collections") as batch:
        batch.drop_column("purged_seq")

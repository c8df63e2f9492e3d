"""seq is unique per collection in documents and in tombstones: a tripwire under the row lock that orders
writers from several processes (the unique constraints also serve the catch-up queries the indexes served).

Revision ID: 0004_unique_seq
Revises: 0003_api_keys
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004_unique_seq"
down_revision: str | None = "0003_api_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("documents", "tombstones")


def upgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_index(f"ix_{table}_collection_seq")
            batch.create_unique_constraint(f"uq_{table}_collection_seq", ["collection_id", "seq"])


def downgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"uq_{table}_collection_seq", type_="unique")
            batch.create_index(f"ix_{table}_collection_seq", ["collection_id", "seq"])

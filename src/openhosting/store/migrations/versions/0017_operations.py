"""Operations under way held in the database, so that several API nodes on one PostgreSQL
exclude each other's (`operations`: the object, the operation's kind, the node running it
and until when its lease holds)."""

import sqlalchemy as sa
from alembic import op

revision = "0017_operations"
down_revision = "0016_vnis"


def upgrade() -> None:
    op.create_table(
        "operations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("object", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("lease_until", sa.Float, nullable=False),
    )
    op.create_index("operations_by_object", "operations", ["object"])


def downgrade() -> None:
    op.drop_index("operations_by_object", table_name="operations")
    op.drop_table("operations")

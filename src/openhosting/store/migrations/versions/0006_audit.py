"""The audit trail of state-changing commands."""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("user", sa.String(36), nullable=False),
        sa.Column("remote", sa.String(64), nullable=False, server_default=""),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("path", sa.String(512), nullable=False),
        sa.Column("object", sa.String(64), nullable=True),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("error", sa.String(16), nullable=False, server_default=""),
    )
    op.create_index("audit_by_object", "audit", ["object"])
    op.create_index("audit_by_user", "audit", ["user"])


def downgrade() -> None:
    op.drop_table("audit")

"""Servers."""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.create_table(
        "servers",
        sa.Column("uuid", sa.String(36), primary_key=True),
        sa.Column(
            "user",
            sa.String(36),
            sa.ForeignKey("users.uuid", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="stopped"),
        sa.Column("started_at", sa.Integer, nullable=True),
        sa.Column("vnc_display", sa.Integer, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("servers_by_user", "servers", ["user"])


def downgrade() -> None:
    op.drop_table("servers")

"""Billing: subscription limits on servers, balances, and metered usage."""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    with op.batch_alter_table("users") as users:
        users.add_column(sa.Column("max_servers", sa.Integer, nullable=True))
        users.add_column(sa.Column("max_cpu_mhz", sa.Integer, nullable=True))
        users.add_column(sa.Column("max_mem_mb", sa.Integer, nullable=True))
        users.add_column(sa.Column("balance", sa.BigInteger, nullable=False, server_default="0"))
        users.add_column(sa.Column("metered_at", sa.Float, nullable=True))
    op.create_table(
        "usage",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "user",
            sa.String(36),
            sa.ForeignKey("users.uuid", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("start", sa.Float, nullable=False),
        sa.Column("end", sa.Float, nullable=False),
        sa.Column("drive_bytes", sa.BigInteger, nullable=False),
        sa.Column("cpu_mhz", sa.Integer, nullable=False),
        sa.Column("mem_mb", sa.Integer, nullable=False),
        sa.Column("ips", sa.Integer, nullable=False),
        sa.Column("vlans", sa.Integer, nullable=False),
        sa.Column("charge", sa.BigInteger, nullable=False),
    )
    op.create_index("usage_by_user", "usage", ["user", "end"])


def downgrade() -> None:
    op.drop_table("usage")
    with op.batch_alter_table("users") as users:
        for column in ("metered_at", "balance", "max_mem_mb", "max_cpu_mhz", "max_servers"):
            users.drop_column(column)

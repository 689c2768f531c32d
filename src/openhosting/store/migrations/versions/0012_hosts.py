"""Hosts with their capacity and heartbeat, and the host each drive lives on.

Existing drives get an empty `host`: the daemon's first registration of its host gives them
its name (the migration cannot know the configured name)."""

import sqlalchemy as sa
from alembic import op

revision = "0012_hosts"
down_revision = "0011_web_sessions"


def upgrade() -> None:
    op.create_table(
        "hosts",
        sa.Column("name", sa.String(253), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False, server_default="online"),
        sa.Column("cores", sa.Integer, nullable=False),
        sa.Column("core_mhz", sa.Integer, nullable=False),
        sa.Column("memory_mb", sa.BigInteger, nullable=False),
        # A JSON object tier → bytes the tier's file system holds.
        sa.Column("disk_bytes_by_tier", sa.Text, nullable=False, server_default="{}"),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    with op.batch_alter_table("drives") as drives:
        drives.add_column(sa.Column("host", sa.String(253), nullable=False, server_default=""))
        drives.create_index("drives_by_host", ["host", "tier"])


def downgrade() -> None:
    with op.batch_alter_table("drives") as drives:
        drives.drop_index("drives_by_host")
        drives.drop_column("host")
    op.drop_table("hosts")

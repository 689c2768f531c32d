"""Per-tier drive-bytes limits: a JSON object of tier → bytes on each user (`{}`: none)."""

import sqlalchemy as sa
from alembic import op

revision = "0009_tier_limits"
down_revision = "0008_guest_io"


def upgrade() -> None:
    with op.batch_alter_table("users") as users:
        users.add_column(
            sa.Column("max_drive_bytes_by_tier", sa.Text, nullable=False, server_default="{}")
        )


def downgrade() -> None:
    with op.batch_alter_table("users") as users:
        users.drop_column("max_drive_bytes_by_tier")

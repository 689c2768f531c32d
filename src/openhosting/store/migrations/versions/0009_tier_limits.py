"""Per-tier drive-bytes limits: a JSON object of tier → bytes on each user (`{}`: none).

Revision ID: 0009_tier_limits
Revises: 0008_guest_io
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_tier_limits"
down_revision = "0008_guest_io"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as users:
        users.add_column(
            sa.Column("max_drive_bytes_by_tier", sa.Text, nullable=False, server_default="{}")
        )


def downgrade() -> None:
    with op.batch_alter_table("users") as users:
        users.drop_column("max_drive_bytes_by_tier")

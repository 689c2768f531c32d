"""Drives and the claims held on them."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "drives",
        sa.Column("uuid", sa.String(36), primary_key=True),
        sa.Column(
            "user",
            sa.String(36),
            sa.ForeignKey("users.uuid", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.String(256), nullable=False, server_default=""),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("claim_type", sa.String(16), nullable=False, server_default="exclusive"),
        sa.Column("readers", sa.Text, nullable=False, server_default=""),
        sa.Column("tags", sa.Text, nullable=False, server_default=""),
        sa.Column("user_keys", sa.Text, nullable=False, server_default="{}"),
        sa.Column("avoid", sa.Text, nullable=False, server_default=""),
        sa.Column("cipher", sa.String(32), nullable=False),
        sa.Column("tier", sa.String(16), nullable=False, server_default="disk"),
        sa.Column("wrapped_passphrase", sa.LargeBinary, nullable=True),
        sa.Column("wrapped_master_key", sa.LargeBinary, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("read_bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("read_requests", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("write_bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("write_requests", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_index("drives_by_user", "drives", ["user"])
    op.create_table(
        "claims",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "drive",
            sa.String(36),
            sa.ForeignKey("drives.uuid", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("user", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("holder", sa.String(36), nullable=False),
        sa.Column("device", sa.String(32), nullable=False, server_default=""),
        sa.Column("exclusive", sa.Boolean, nullable=False),
    )
    op.create_index("claims_by_drive", "claims", ["drive"])


def downgrade() -> None:
    op.drop_table("claims")
    op.drop_table("drives")

"""Web console tokens: single-use, short-lived, stored as their SHA-256 only."""

import sqlalchemy as sa
from alembic import op

# 0009 (tier limits) is made on a branch of its own beside this one: both revise 0008, and
# the store upgrades to every head.
revision = "0010_console_tokens"
down_revision = "0009_tier_limits"


def upgrade() -> None:
    op.create_table(
        "console_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("server", sa.String(36), nullable=False),
        sa.Column(
            "user", sa.String(36), sa.ForeignKey("users.uuid", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("expires", sa.Float, nullable=False),
        sa.Column("used_at", sa.Float, nullable=True),
    )
    op.create_index("console_tokens_by_expiry", "console_tokens", ["expires"])


def downgrade() -> None:
    op.drop_index("console_tokens_by_expiry", "console_tokens")
    op.drop_table("console_tokens")

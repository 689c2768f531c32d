"""Dashboard sessions: a signed-in browser, stored as its cookie's SHA-256 only."""

import sqlalchemy as sa
from alembic import op

revision = "0011_web_sessions"
down_revision = "0010_console_tokens"


def upgrade() -> None:
    op.create_table(
        "web_sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column(
            "user", sa.String(36), sa.ForeignKey("users.uuid", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("expires", sa.Float, nullable=False),
    )
    op.create_index("web_sessions_by_expiry", "web_sessions", ["expires"])


def downgrade() -> None:
    op.drop_index("web_sessions_by_expiry", "web_sessions")
    op.drop_table("web_sessions")

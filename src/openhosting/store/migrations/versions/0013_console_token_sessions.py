"""Console tokens asked for by a dashboard session are bound to it: the session's id (its
cookie's SHA-256) beside the token; NULL for a token asked with Basic authentication."""

import sqlalchemy as sa
from alembic import op

revision = "0013_console_token_sessions"
down_revision = "0012_hosts"


def upgrade() -> None:
    with op.batch_alter_table("console_tokens") as batch:
        batch.add_column(sa.Column("session_hash", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("console_tokens") as batch:
        batch.drop_column("session_hash")

"""Imaging jobs are claimed by one daemon of several on one database: who runs a job
(`owner`), until when its claim holds unless renewed (`lease_until`), and how many times it
was started (`attempts`)."""

import sqlalchemy as sa
from alembic import op

revision = "0014_job_leases"
down_revision = "0013_console_token_sessions"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("owner", sa.String(64), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.Float, nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("attempts")
        batch.drop_column("lease_until")
        batch.drop_column("owner")

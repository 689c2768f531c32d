"""Imaging jobs and standard drives: the `jobs` table, imaging status and standard-drive
columns on `drives`, and the platform user that owns the standard drives."""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"

# Written out rather than imported: a migration must not change when the code does.
PLATFORM_USER = "00000000-0000-0000-0000-000000000000"


def upgrade() -> None:
    op.add_column("drives", sa.Column("media", sa.String(8), nullable=False, server_default="disk"))
    op.add_column("drives", sa.Column("format", sa.String(16), nullable=False, server_default=""))
    op.add_column("drives", sa.Column("rawsize", sa.BigInteger, nullable=True))
    op.add_column("drives", sa.Column("imaging", sa.String(16), nullable=True))
    op.add_column("drives", sa.Column("imaging_error", sa.Text, nullable=True))
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("user", sa.String(36), nullable=False),
        sa.Column("dst", sa.String(36), nullable=False),
        sa.Column("src", sa.String(36), nullable=False),
        sa.Column("conversion", sa.String(16), nullable=False, server_default=""),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("bytes_done", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("bytes_total", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("ended_at", sa.Float, nullable=True),
    )
    op.create_index("jobs_by_state", "jobs", ["state"])
    op.create_index("jobs_by_dst", "jobs", ["dst"])
    # An empty key hash: no secret's keyed hash (64 hex digits) ever equals it.
    users = sa.table(
        "users",
        sa.column("uuid", sa.String),
        sa.column("name", sa.String),
        sa.column("key_hash", sa.String),
        sa.column("created_at", sa.Integer),
    )
    op.bulk_insert(
        users, [{"uuid": PLATFORM_USER, "name": "platform", "key_hash": "", "created_at": 0}]
    )


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM users WHERE uuid = :uuid").bindparams(uuid=PLATFORM_USER))
    op.drop_table("jobs")
    for column in ("imaging_error", "imaging", "rawsize", "format", "media"):
        op.drop_column("drives", column)

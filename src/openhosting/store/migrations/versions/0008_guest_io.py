"""Guest I/O folded into drive counters: how much of its QEMU's counters each guest claim has
already added to its drive."""

import sqlalchemy as sa
from alembic import op

# A name of its own rather than a bare number: other branches may add their own 0008.
revision = "0008_guest_io"
down_revision = "0007"

COLUMNS = ("guest_read_bytes", "guest_read_requests", "guest_write_bytes", "guest_write_requests")


def upgrade() -> None:
    with op.batch_alter_table("claims") as claims:
        for column in COLUMNS:
            claims.add_column(sa.Column(column, sa.BigInteger, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("claims") as claims:
        for column in reversed(COLUMNS):
            claims.drop_column(column)

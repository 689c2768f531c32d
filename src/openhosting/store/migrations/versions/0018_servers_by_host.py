"""Servers found by the host that runs them (`servers_by_host`): each host's VXLAN flood lists
and its drain look servers up by `servers.host` every few seconds."""

from alembic import op

revision = "0018_servers_by_host"
down_revision = "0017_operations"


def upgrade() -> None:
    with op.batch_alter_table("servers") as batch:
        batch.create_index("servers_by_host", ["host"])


def downgrade() -> None:
    with op.batch_alter_table("servers") as batch:
        batch.drop_index("servers_by_host")

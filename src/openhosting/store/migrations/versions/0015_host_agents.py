"""Host agents: the address of each host's agent (`hosts.agent`, HOST:PORT; empty: none,
the host's VMs are run by the daemon on it), and the host whose driver runs a server's VM
(`servers.host`; empty: the daemon's own host, as every server before agents)."""

import sqlalchemy as sa
from alembic import op

revision = "0015_host_agents"
down_revision = "0014_job_leases"


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("agent", sa.String(300), nullable=False, server_default=""))
    with op.batch_alter_table("servers") as batch:
        batch.add_column(sa.Column("host", sa.String(253), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("servers") as batch:
        batch.drop_column("host")
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("agent")

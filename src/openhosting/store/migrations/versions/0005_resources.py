"""Resources and networking: the `resources` table (IPs and VLANs), the NICs active servers
hold (`server_nics`), and the IP and VLAN limits of users."""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.add_column("users", sa.Column("max_ips", sa.Integer, nullable=True))
    op.add_column("users", sa.Column("max_vlans", sa.Integer, nullable=True))
    op.create_table(
        "resources",
        sa.Column("type", sa.String(8), primary_key=True),
        sa.Column("resource", sa.String(64), primary_key=True),
        sa.Column(
            "user",
            sa.String(36),
            sa.ForeignKey("users.uuid", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.String(256), nullable=False, server_default=""),
        sa.Column("tags", sa.Text, nullable=False, server_default=""),
        sa.Column("user_keys", sa.Text, nullable=False, server_default="{}"),
        sa.Column("created_at", sa.Integer, nullable=False),
    )
    op.create_index("resources_by_user", "resources", ["user"])
    op.create_table(
        "server_nics",
        sa.Column("server", sa.String(36), primary_key=True),
        sa.Column("nic", sa.Integer, primary_key=True),
        sa.Column("user", sa.String(36), nullable=False),
        sa.Column("network", sa.String(36), nullable=False),
        sa.Column("mac", sa.String(17), nullable=False),
        sa.Column("address", sa.String(15), nullable=True, unique=True),
        sa.Column("temporary", sa.Boolean, nullable=False, server_default="0"),
        sa.UniqueConstraint("network", "mac", name="server_nics_mac_per_network"),
    )


def downgrade() -> None:
    op.drop_table("server_nics")
    op.drop_table("resources")
    op.drop_column("users", "max_vlans")
    op.drop_column("users", "max_ips")

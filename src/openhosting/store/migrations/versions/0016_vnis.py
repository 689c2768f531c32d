"""VLANs across hosts from the database: each VLAN's VXLAN network identifier
(`resources.vni`, unique, taken at the VLAN's creation and kept for its life; NULL for IP
resources), and each host's underlay address (`hosts.vxlan_local`, empty: none known), from
which every host's VXLAN peers are read.

Existing VLANs get the VNI every host gave them so far (the hash of their UUID), or the next
free one where two hashed alike (they could never be on one host together anyway).
"""

import hashlib
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0016_vnis"
down_revision = "0015_host_agents"

# Written out rather than imported: a migration must not change when the code does.
VNI_COUNT = 1 << 24


def _hashed_vni(vlan: str) -> int:
    digest = hashlib.sha256(uuid.UUID(vlan).bytes).digest()
    return int.from_bytes(digest[:4], "big") % (VNI_COUNT - 1) + 1


def _first_free(vlan: str, taken: set[int]) -> int:
    vni = _hashed_vni(vlan)
    while vni in taken:
        vni = vni % (VNI_COUNT - 1) + 1
    return vni


def upgrade() -> None:
    with op.batch_alter_table("resources") as batch:
        batch.add_column(sa.Column("vni", sa.Integer, nullable=True))
        batch.create_unique_constraint("resources_vni", ["vni"])
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("vxlan_local", sa.String(45), nullable=False, server_default=""))
    resources = sa.table(
        "resources", sa.column("type"), sa.column("resource"), sa.column("vni", sa.Integer)
    )
    connection = op.get_bind()
    vlans = connection.execute(
        sa.select(resources.c.resource)
        .where(resources.c.type == "vlan")
        .order_by(resources.c.resource)
    ).scalars()
    taken: set[int] = set()
    for vlan in list(vlans):
        vni = _first_free(vlan, taken)
        taken.add(vni)
        connection.execute(
            sa.update(resources)
            .where(resources.c.type == "vlan", resources.c.resource == vlan)
            .values(vni=vni)
        )


def downgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("vxlan_local")
    with op.batch_alter_table("resources") as batch:
        batch.drop_constraint("resources_vni", type_="unique")
        batch.drop_column("vni")

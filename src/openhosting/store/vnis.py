"""VLANs' VXLAN network identifiers (`resources.vni`) and the hosts' underlay addresses
(`hosts.vxlan_local`): what every host reads to carry a VLAN across hosts.

A VNI is taken in the transaction that creates the VLAN and kept for the VLAN's life (its
row's), so every host uses the same one and no two VLANs ever share one. The caller's first
choice (the services give the hash of the VLAN's UUID, `network.vxlan.vni_of`, what every host
used before the database held VNIs) is taken when free, else the next free value.
"""

from collections.abc import Iterable

from sqlalchemy import Connection, select

from openhosting.store import row_locks
from openhosting.store.tables import hosts, resources

VNI_COUNT = 1 << 24  # VXLAN's 24-bit identifier; 0 is never used


def first_free_vni(preferred: int, taken: Iterable[int]) -> int:
    """`preferred` when not in `taken`, else the next free value after it (wrapping within
    1..2^24-1)."""
    used = set(taken)
    if len(used) >= VNI_COUNT - 1:
        raise ValueError("every VNI is taken")
    vni = preferred
    while vni in used:  # ends: a free value exists (checked above)
        vni = vni % (VNI_COUNT - 1) + 1
    return vni


def allocate_vni(connection: Connection, preferred: int) -> int:
    """A VNI no VLAN holds (`preferred` if free), for the VLAN this transaction inserts.
    On PostgreSQL the VNI space is held until the transaction ends: another node's VLAN
    create waits, then sees this one's (the unique column is the last word either way)."""
    if not 0 < preferred < VNI_COUNT:
        raise ValueError(f"VNI {preferred} is not in 1..{VNI_COUNT - 1}")
    row_locks.lock_vni_space(connection)
    # Only the values from `preferred` on can be in its way.
    query = select(resources.c.vni).where(resources.c.vni.is_not(None))
    taken = set(connection.execute(query.where(resources.c.vni >= preferred)).scalars())
    vni = preferred
    while vni in taken:
        vni += 1
    if vni < VNI_COUNT:
        return vni
    return first_free_vni(1, connection.execute(query).scalars())  # past the top: wrap


def vnis_of(connection: Connection, vlans: Iterable[str]) -> dict[str, int]:
    """VLAN UUID → its VNI, for those of `vlans` that exist."""
    wanted = sorted(set(vlans))
    if not wanted:
        return {}
    query = select(resources.c.resource, resources.c.vni).where(
        resources.c.type == "vlan", resources.c.resource.in_(wanted), resources.c.vni.is_not(None)
    )
    return {vlan: int(vni) for vlan, vni in connection.execute(query)}


def set_vxlan_local(connection: Connection, name: str, address: str) -> bool:
    """Record host `name`'s underlay address (empty: none): whether the host exists."""
    result = connection.execute(
        hosts.update().where(hosts.c.name == name).values(vxlan_local=address)
    )
    return result.rowcount == 1


def vxlan_peers(connection: Connection, local: str, since: float) -> list[str]:
    """The underlay addresses of every host but `local` whose heartbeat is at `since` or
    later (online), by address."""
    query = select(hosts.c.vxlan_local).where(
        hosts.c.name != local,
        hosts.c.vxlan_local != "",
        hosts.c.heartbeat_at >= since,
        hosts.c.state == "online",
    )
    return sorted(set(connection.execute(query).scalars()))

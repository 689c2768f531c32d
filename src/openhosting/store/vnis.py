"""VLANs' VXLAN network identifiers (`resources.vni`), the hosts' underlay addresses
(`hosts.vxlan_local`) and each VLAN's flood list (the hosts that run one of its servers): what
every host reads to carry a VLAN across hosts.

A VNI is taken in the transaction that creates the VLAN and kept for the VLAN's life (its
row's), so every host uses the same one and no two VLANs ever share one. The caller's first
choice (the services give the hash of the VLAN's UUID, `network.vxlan.vni_of`, what every host
used before the database held VNIs) is taken when free, else the next free value.
"""

from collections.abc import Collection, Iterable
from typing import Any

from sqlalchemy import CTE, ColumnElement, Connection, FromClause, Select, func, select, union

from openhosting.store import row_locks
from openhosting.store.tables import hosts, resources, server_nics, servers

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


# The `network` of server_nics rows that are no VLAN (services/servers/server_network.py's).
NOT_VLANS = ("public", "vnc")


def _host_of(server_rows: FromClause, here: str) -> ColumnElement[str]:
    """The host of a server's row: `servers.host`, whose empty value (the servers of before
    host agents, and those an API node runs itself) is the host named `here`."""
    return func.coalesce(func.nullif(server_rows.c.host, ""), here)


def _vlans_of(local: str, here: str, making: Collection[str]) -> CTE:
    """Host `local`'s VLANs (see `flood_lists`), as a common table expression: found once,
    used twice."""
    vlans = select(server_nics.c.network).where(server_nics.c.network.not_in(NOT_VLANS))
    # Plain comparisons of the column (not `_host_of`): an index on servers.host can serve.
    named_local = servers.c.host.in_((local, "")) if local == here else servers.c.host == local
    on_local = vlans.join(servers, servers.c.uuid == server_nics.c.server).where(named_local)
    if making:
        being_made = vlans.where(server_nics.c.server.in_(sorted(making)))
        return union(on_local, being_made).cte("mine")
    return on_local.distinct().cte("mine")


def _their_nics(
    mine: CTE, local: str, here: str, since: float, making: Collection[str], *columns: Any
) -> Select[Any]:
    """The NICs on `mine`'s VLANs of the servers on the other online hosts with an underlay
    address: their VLAN, their host's address and `columns`."""
    their_nics, their_servers = server_nics.alias("their_nics"), servers.alias("their_servers")
    return (
        select(their_nics.c.network, hosts.c.vxlan_local, *(their_nics.c[c] for c in columns))
        .select_from(
            their_nics.join(their_servers, their_servers.c.uuid == their_nics.c.server).join(
                hosts, hosts.c.name == _host_of(their_servers, here)
            )
        )
        .where(
            their_nics.c.network.in_(select(mine.c.network)),
            # Those being made here are here, whatever their row says yet.
            their_nics.c.server.not_in(sorted(making)),
            hosts.c.name != local,
            hosts.c.vxlan_local != "",
            hosts.c.heartbeat_at >= since,
            hosts.c.state == "online",
        )
    )


def flood_lists(
    connection: Connection,
    local: str,
    here: str,
    since: float,
    making: Collection[str] = (),
) -> dict[str, list[str]]:
    """Host `local`'s VLANs → the underlay addresses of the other online hosts (heartbeat at
    `since` or later) that run a server with a NIC on that VLAN, by address (empty: none),
    in one query whatever the number of VLANs. A host's VLANs are those of the NICs held
    (`server_nics`) by servers whose `servers.host` is `local` (empty: `here`), and by the
    servers of `making`, whose NICs are being made on `local` now (a start or a move, before
    their row names the host)."""
    mine = _vlans_of(local, here, making)
    theirs = _their_nics(mine, local, here, since, making).distinct().subquery("theirs")
    query = select(mine.c.network, theirs.c.vxlan_local).select_from(
        mine.outerjoin(theirs, theirs.c.network == mine.c.network)
    )
    lists: dict[str, set[str]] = {}
    for vlan, address in connection.execute(query):
        peers = lists.setdefault(vlan, set())
        if address is not None:
            peers.add(address)
    return {vlan: sorted(peers) for vlan, peers in sorted(lists.items())}


def any_peer(connection: Connection, local: str, since: float) -> bool:
    """Whether the table knows the underlay address of an online host other than `local`
    (else the hosts flood to `network.vxlan_peers`, the configured fallback)."""
    query = select(hosts.c.name).where(
        hosts.c.name != local,
        hosts.c.vxlan_local != "",
        hosts.c.heartbeat_at >= since,
        hosts.c.state == "online",
    )
    return connection.execute(query.limit(1)).first() is not None


def remote_macs(
    connection: Connection,
    local: str,
    here: str,
    since: float,
    making: Collection[str] = (),
) -> dict[str, dict[str, str]]:
    """Host `local`'s VLANs (as `flood_lists` finds them) → the MACs of their NICs held by
    servers on the other online hosts with an underlay address → that host's address (a VLAN
    with none: an empty mapping), in one query: where `local` sends a frame for each of them
    alone, not to the whole flood list."""
    mine = _vlans_of(local, here, making)
    theirs = _their_nics(mine, local, here, since, making, "mac").subquery("theirs")
    query = select(mine.c.network, theirs.c.mac, theirs.c.vxlan_local).select_from(
        mine.outerjoin(theirs, theirs.c.network == mine.c.network)
    )
    macs: dict[str, dict[str, str]] = {}
    for vlan, mac, address in connection.execute(query):
        entries = macs.setdefault(vlan, {})
        if mac is not None:
            entries[mac] = address
    return {vlan: dict(sorted(entries.items())) for vlan, entries in sorted(macs.items())}

"""VLANs across hosts from the database, as the services use it (real SQLite, real
services): a VLAN created gets its VNI in its row, a server's NICs on it reach the network
driver with that VNI and the flood list of the hosts running the VLAN's servers, and an
operator records a host's underlay address. The kernel's side:
tests/integration/test_vxlan_networking.py."""

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from sqlalchemy import Engine, update

from openhosting.errors import MissingError, UsageError
from openhosting.model.server import ServerConfig
from openhosting.network.driver import Backend, NicPlan
from openhosting.network.links import Counters
from openhosting.network.netdevs import TapNetdev
from openhosting.network.vxlan import vni_of
from openhosting.services.platform import open_platform
from openhosting.services.servers.server_network import ServerNetworks
from openhosting.store import hosts as host_store
from openhosting.store import resources as resource_store
from openhosting.store import servers as server_store
from openhosting.store import vnis as vni_store
from openhosting.store.records import HostRecord
from openhosting.store.tables import hosts, resources, servers
from tests.conftest import config_in


class RecordingNetwork:
    """A bridge-mode network driver that only records what it is asked."""

    mode = "bridge"
    namespace = ""
    pool_for_auto = True
    vnc_address = None

    def __init__(self) -> None:
        self.attached: list[NicPlan] = []
        self.reconciled: list[NicPlan] = []
        self.peers: list[dict[str, list[str]] | None] = []
        self.macs: list[dict[str, dict[str, str]]] = []

    async def set_vxlan_peers(self, peers: Mapping[str, Sequence[str]] | None) -> None:
        self.peers.append(None if peers is None else {v: list(p) for v, p in peers.items()})

    async def set_vxlan_macs(self, macs: Mapping[str, Mapping[str, str]]) -> None:
        self.macs.append({vlan: dict(each) for vlan, each in macs.items()})

    async def attach(self, nics: Sequence[NicPlan]) -> dict[int, Backend]:
        self.attached.extend(nics)
        return {nic.index: TapNetdev(f"tap{nic.index}") for nic in nics}

    async def reconcile(self, active: Sequence[NicPlan]) -> None:
        self.reconciled.extend(active)

    async def detach(self, nics: Sequence[NicPlan]) -> None:
        pass

    async def counters(self, nics: Sequence[NicPlan]) -> Counters:
        return Counters()


def register(engine: Engine, name: str, address: str, at: float) -> None:
    record = HostRecord(
        name=name, state="online", cores=2, core_mhz=2000, memory_mb=1024,
        disk_bytes_by_tier={}, heartbeat_at=at, created_at=at, vxlan_local=address,
    )  # fmt: skip
    with engine.begin() as connection:
        host_store.register_host(connection, record)


async def test_a_vlans_nics_carry_its_database_vni_to_the_peers_of_the_hosts_table(
    tmp_path: Path,
) -> None:
    config = config_in(
        tmp_path,
        hypervisor={"driver": "fake"},
        host={"name": "hv-1"},
        network={"vxlan_local": "198.18.0.1"},
    )
    platform = open_platform(config)
    try:
        platform.hosts.register()
        user = platform.accounts.create_user("alice").uuid
        vlan = str(platform.resources.create(user, "vlan", {})["resource"])
        with platform.engine.connect() as connection:
            vni = vni_store.vnis_of(connection, [vlan])[vlan]
            own = platform.hosts.overview()[0].record
        assert vni == vni_of(vlan)  # free: its hash, as every host used before
        assert own.vxlan_local == "198.18.0.1"  # the daemon's own setting, registered

        now = time.time()
        register(platform.engine, "hv-2", "", now)
        platform.hosts.set_vxlan_local("hv-2", "198.18.0.2")
        register(platform.engine, "hv-3", "198.18.0.3", now - 3600)  # offline
        assert platform.hosts.vxlan_peers() == ["198.18.0.2"]

        driver = RecordingNetwork()
        networks = ServerNetworks(
            platform.engine, platform.resources, platform.servers.networks._pool,
            driver,  # type: ignore[arg-type]
            platform.hosts.flood_lists, platform.hosts.remote_macs,
        )  # fmt: skip
        server = "0d6f4a2e-0000-4000-8000-00000000000a"
        config_of = ServerConfig.from_properties(
            {"name": "s", "cpu": "1000", "mem": "128", "nic:1:model": "e1000", "nic:1:vlan": vlan}
        )
        with platform.engine.begin() as connection:  # it ran on hv-2 before
            server_store.insert_server(
                connection, uuid=server, user=user, config="{}", created_at=0, host="hv-2"
            )
        await networks.acquire(user, server, config_of)
        assert [(nic.vlan, nic.vni) for nic in driver.attached] == [(vlan, vni)]
        # hv-2 is online but runs none of the VLAN's servers (this one's row names it until
        # its start is done): no frame of the VLAN goes there.
        assert driver.peers == [{vlan: []}]
        with platform.engine.begin() as connection:  # the start done: the row names its host
            connection.execute(update(servers).values(host="hv-1", status="active"))
        await networks.recover({server: config_of})
        assert [(nic.vlan, nic.vni) for nic in driver.reconciled] == [(vlan, vni)]
        assert driver.peers[-1] == {vlan: []}
        # A server of the VLAN on a host online: that host is in its flood list at the next
        # look; one on a host offline is not.
        register(platform.engine, "hv-4", "198.18.0.4", time.time())
        with platform.engine.begin() as connection:
            for number, on in ((1, "hv-4"), (2, "hv-3")):
                other = f"0d6f4a2e-0000-4000-8000-00000000010{number}"
                server_store.insert_server(
                    connection, uuid=other, user=user, config="{}", status="active",
                    created_at=0, host=on,
                )  # fmt: skip
                resource_store.insert_nic(
                    connection, server=other, nic=1, user=user, network=vlan,
                    mac=f"52:54:00:00:01:0{number}", address=None, temporary=False,
                )  # fmt: skip
        await networks.refresh_vxlan_peers()
        assert driver.peers[-1] == {vlan: ["198.18.0.4"]}
        # And that guest's MAC goes to its host alone (the offline host's guest has none).
        assert driver.macs[-1] == {vlan: {"52:54:00:00:01:01": "198.18.0.4"}}
        await networks.release(server)
        for number in (1, 2):
            await networks.release(f"0d6f4a2e-0000-4000-8000-00000000010{number}")

        # The VNI is kept for the VLAN's life: the row carries it until its destroy.
        with platform.engine.begin() as connection:
            connection.execute(update(hosts).values(heartbeat_at=now))
            assert resource_store.get_resource(connection, "vlan", vlan) is not None
        platform.resources.destroy(user, "vlan", vlan)
        with platform.engine.connect() as connection:
            assert (
                connection.execute(resources.select().where(resources.c.vni == vni)).first() is None
            )
    finally:
        platform.close()


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("hv", "not an IPv4 address"),
        ("127.0.0.1", "unicast"),
        ("239.0.0.1", "unicast"),
        # Every other host sends its VLANs' frames there: the underlay's broadcast, to all.
        ("255.255.255.255", "unicast"),
        ("240.0.0.1", "unicast"),
    ],
)
def test_a_bad_underlay_address_is_refused(tmp_path: Path, address: str, message: str) -> None:
    platform = open_platform(config_in(tmp_path, hypervisor={"driver": "fake"}))
    try:
        platform.hosts.register()
        with pytest.raises(UsageError, match=message):
            platform.hosts.set_vxlan_local(platform.hosts.name, address)
        with pytest.raises(MissingError, match="not registered"):
            platform.hosts.set_vxlan_local("hv-nowhere", "198.18.0.9")
        assert platform.hosts.set_vxlan_local(platform.hosts.name, "").vxlan_local == ""
    finally:
        platform.close()

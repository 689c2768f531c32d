"""A platform whose hypervisor is the fake (`hypervisor.driver = fake`): real SQLite, real
files, real services, VMs in memory. For fast service-level tests of the VM lifecycle; the
QEMU side of the same rules is tests/hypervisor/test_driver_behaviour.py and the integration
tests."""

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from openhosting.host_capacity import HostCapacity
from openhosting.hypervisor.driver import EventHandler, HypervisorDriver
from openhosting.hypervisor.fake import FakeHypervisor
from openhosting.network.driver import Backend, NetworkDriver, NicPlan
from openhosting.network.links import Counters
from openhosting.network.netdevs import TapNetdev
from openhosting.services.cluster.host_drivers import Closer, Measure
from openhosting.services.platform import Platform, open_platform
from tests.conftest import config_in


@contextmanager
def fake_platform(tmp_path: Path) -> Iterator[tuple[Platform, FakeHypervisor]]:
    """An open platform on `tmp_path` and its fake hypervisor."""
    platform = open_platform(config_in(tmp_path, hypervisor={"driver": "fake"}))
    try:
        driver = platform.servers.lifecycle.driver
        assert isinstance(driver, FakeHypervisor)
        yield platform, driver
    finally:
        platform.close()


class RecordingNetwork:
    """A bridge-mode network driver in memory: the NICs attached (by server and index, with
    the ports they block), the VNC overlays open, every call in `calls`."""

    mode = "bridge"
    pool_for_auto = True

    def __init__(self, namespace: str = "", vnc_address: str | None = "198.51.100.1") -> None:
        self.namespace = namespace
        self.vnc_address = vnc_address
        self.nics: dict[tuple[str, int], NicPlan] = {}
        self.overlays: dict[str, int] = {}
        self.calls: list[str] = []
        self.fail_attach = False
        self.flood_lists: list[dict[str, list[str]] | None] = []  # each set_vxlan_peers's
        self.macs: list[dict[str, dict[str, str]]] = []  # each set_vxlan_macs's

    def guest_address(self, nic: NicPlan) -> str | None:
        return nic.address

    async def start(self) -> None:
        self.calls.append("start")

    async def attach(self, nics: Sequence[NicPlan]) -> dict[int, Backend]:
        self.calls.append("attach")
        if self.fail_attach:
            raise OSError("the tap cannot be made")
        self.nics.update({(nic.server, nic.index): nic for nic in nics})
        return {nic.index: TapNetdev(f"tap-{nic.server[:4]}-{nic.index}") for nic in nics}

    async def detach(self, nics: Sequence[NicPlan]) -> None:
        self.calls.append("detach")
        for nic in nics:
            self.nics.pop((nic.server, nic.index), None)

    async def block(self, nic: NicPlan) -> None:
        self.calls.append("block")
        self.nics[(nic.server, nic.index)] = nic

    async def counters(self, nics: Sequence[NicPlan]) -> Counters:
        return Counters(rx_bytes=7 * len(nics))

    async def reconcile(self, active: Sequence[NicPlan]) -> None:
        self.calls.append("reconcile")
        self.nics = {(nic.server, nic.index): nic for nic in active}

    async def set_vxlan_peers(self, peers: Mapping[str, Sequence[str]] | None) -> None:
        self.calls.append("set_vxlan_peers")
        lists = None if peers is None else {vlan: list(each) for vlan, each in peers.items()}
        self.flood_lists.append(lists)

    async def set_vxlan_macs(self, macs: Mapping[str, Mapping[str, str]]) -> None:
        self.calls.append("set_vxlan_macs")
        self.macs.append({vlan: dict(each) for vlan, each in macs.items()})

    async def keep_helpers_running(self) -> None:
        self.calls.append("keep_helpers_running")

    async def open_vnc(self, guest: str, port: int) -> bool:
        self.overlays[guest] = port
        return True

    async def close_vnc(self, guest: str) -> None:
        self.overlays.pop(guest, None)

    async def open_vnc_address(self, address: str, port: int) -> bool:
        self.overlays[address] = port
        return True

    async def close_vnc_address(self, address: str) -> None:
        self.overlays.pop(address, None)

    async def close(self, idle: bool) -> None:
        self.calls.append("close")

    def of(self, server: str) -> list[NicPlan]:
        """The NICs attached here for `server`, by index."""
        return sorted((nic for (s, _), nic in self.nics.items() if s == server),
                      key=lambda nic: nic.index)  # fmt: skip


# What the fake agent of `platform_with_agent_host` reports of its host.
REMOTE_CAPACITY = HostCapacity(
    cores=4, core_mhz=2000, memory_mb=4096, disk_bytes_by_tier={"disk": 1 << 40, "ssd": 1 << 40}
)


@contextmanager
def platform_with_agent_host(
    tmp_path: Path, host: str = "hv-a", network: NetworkDriver | None = None
) -> Iterator[tuple[Platform, FakeHypervisor, FakeHypervisor, str]]:
    """A fake platform on its own host, with host `host` whose agent is a fake of its own
    (reached by the platform's next `servers.recover()`, reporting REMOTE_CAPACITY, its
    network `network` or a RecordingNetwork), and a user: (platform, this host's driver, the
    other host's, the user's uuid)."""
    with fake_platform(tmp_path) as (platform, local):
        remote = FakeHypervisor(tmp_path / f"{host}-run")
        network = network or RecordingNetwork()

        async def connect(
            name: str, _address: str, handler: EventHandler
        ) -> tuple[HypervisorDriver, Closer, Measure, NetworkDriver]:
            assert name == host
            remote.listen(handler)

            async def close() -> None:
                pass

            async def measure() -> HostCapacity:
                return REMOTE_CAPACITY

            return remote, close, measure, network

        platform.hosts.register()
        platform.hosts.set_agent(host, "127.0.0.1:7430")
        platform.hosts.heartbeat({host: REMOTE_CAPACITY})
        platform.servers.lifecycle.drivers.connector = connect
        yield platform, local, remote, platform.accounts.create_user().uuid

"""One contract for every networking mode (`NetworkDriver`), run against user mode (real passt,
its counting table and cgroup, the guest fence) and bridge mode (real bridges, taps, nftables
and dnsmasq, in a network namespace each test creates and deletes). No guest is needed: what
a driver promises is what it leaves on the host.

What the modes share: `attach` gives each NIC a QEMU backend and its plumbing, `detach` takes
all of it away and is harmless twice, an `attach` that fails half-way leaves nothing behind
(nor does a `detach` after it), an address the server holds is the one offered to the guest,
`reconcile` keeps the NICs of running servers only, and `close(idle=True)` leaves nothing of
ours. Where they differ, the `Mode` says so:

| | user mode | bridge mode |
|---|---|---|
| a NIC without an address | passt offers 10.0.2.15 | none offered (the pool's `auto`) |
| `nic:N:block` | nothing to do: passt forwards no port inbound | drops on the NIC's tap |
| VNC on the guest's address (overlay) | no (the guest's address is passt's own) | yes |
"""

import json
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import pytest

from openhosting.config import NetworkSettings
from openhosting.hypervisor.argv import StreamNetdev, TapNetdev
from openhosting.model.port_block import parse_block_list
from openhosting.network import nic_firewall, passt, spoof_guard, vnc_overlay
from openhosting.network.bridge_mode import BridgeNetwork
from openhosting.network.driver import NetworkDriver, NicPlan
from openhosting.network.errors import NetworkError
from openhosting.network.guest_fence import table_name as fence_table
from openhosting.network.links import Counters
from openhosting.network.passt_counters import PasstCounters
from openhosting.network.pool import AddressPool
from openhosting.network.user_mode import UserNetwork, passt_account
from testbed.leftovers import kill_leftover_vms
from tests.integration.netns_helpers import link_names, network_namespace

SERVER = "0f962616-2071-4173-be79-7dd084271edf"
OTHER = "8d2b1c3e-5f40-4a61-9b7c-2e3d4f5a6b7c"
SETTINGS = NetworkSettings()
POOL = AddressPool.parse(
    SETTINGS.pool_subnet, SETTINGS.pool_gateway, SETTINGS.pool_nameservers, SETTINGS.pool_range
)
HELD = "192.0.2.12"  # an address a server holds (an IP resource)
BLOCK = parse_block_list("tcp/22 udp/53", "nic:0:block")
# A server's two NICs: one holding an address with ports blocked, one asking DHCP for any.
NICS = (
    NicPlan(SERVER, 0, "52:54:00:00:00:0a", address=HELD, block=BLOCK),
    NicPlan(SERVER, 1, "52:54:00:00:00:0b"),
)
OTHERS = (NicPlan(OTHER, 0, "52:54:00:00:00:0c", address="192.0.2.13"),)


def nft(namespace: str, *args: str) -> str:
    argv = ["nft", *args] if not namespace else ["ip", "netns", "exec", namespace, "nft", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    return done.stdout


class Mode:
    """A driver of one mode and how to see, on the real host, what it made."""

    name: str
    driver: NetworkDriver
    blocks_on_the_nic: bool  # False: no inbound port reaches a guest in this mode anyway
    overlays_vnc: bool
    backend_type: type
    # How `failing_nic`'s attach fails: the error's type and words.
    failure: tuple[type[Exception], str]

    def failing_nic(self) -> NicPlan:
        """A NIC whose attach fails for a real reason of this mode, after some of its
        steps were done."""
        raise NotImplementedError

    async def plumbing(self, nics: Sequence[NicPlan]) -> set[str]:
        """What of ours exists on the host for these NICs (empty: nothing)."""
        raise NotImplementedError

    def offered(self, nic: NicPlan) -> str | None:
        """The address the real DHCP server of the NIC offers it (None: none)."""
        raise NotImplementedError

    def blocked(self, nic: NicPlan) -> str:
        """The rules in force on the NIC's inbound traffic (text; empty: none)."""
        raise NotImplementedError

    def vnc_overlaid(self, address: str) -> bool:
        raise NotImplementedError

    def anything_of_ours(self) -> set[str]:
        """Whatever of this platform's is left on the host at all (empty after an idle close)."""
        raise NotImplementedError


class UserMode(Mode):
    name = "user"
    blocks_on_the_nic = False
    overlays_vnc = False
    backend_type = StreamNetdev
    failure = (ValueError, "too long for a unix socket")

    def __init__(self, run: Path) -> None:
        self.run = run
        self.driver = UserNetwork(POOL, run / "network")
        self.passt_dir = run / "network" / "passt"
        self.counting = PasstCounters(self.passt_dir)

    def failing_nic(self) -> NicPlan:
        # Its counting table and cgroup are made, then its passt socket's path is too long.
        return NicPlan(SERVER, 10**40, "52:54:00:00:00:0f")

    async def plumbing(self, nics: Sequence[NicPlan]) -> set[str]:
        found = set()
        tables = nft("", "list", "tables")
        for nic in nics:
            files = passt.PasstFiles(self.passt_dir, nic.server, nic.index)
            if passt.adopt(files) is not None:
                found.add(f"passt {files.stem}")
            found |= {f"file {path.name}" for path in (files.socket, files.pidfile)
                      if path.exists()}  # fmt: skip
            if self.counting.available:
                if f"table inet {self.counting.table_of(files)}" in tables.splitlines():
                    found.add(f"counting table {files.stem}")
                if self.counting.group_of(files).exists():
                    found.add(f"cgroup {files.stem}")
        return found

    def _argv(self, nic: NicPlan) -> list[str]:
        pid = passt.adopt(passt.PasstFiles(self.passt_dir, nic.server, nic.index))
        assert pid is not None, "the NIC's passt runs"
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")

    def offered(self, nic: NicPlan) -> str | None:
        argv = self._argv(nic)
        return None if "--no-dhcp" in argv else argv[argv.index("--address") + 1]

    def blocked(self, nic: NicPlan) -> str:
        argv = self._argv(nic)
        # Nothing to block: no port of the host leads to the guest.
        assert argv[argv.index("--tcp-ports") + 1] == argv[argv.index("--udp-ports") + 1] == "none"
        return ""

    def vnc_overlaid(self, address: str) -> bool:
        return False

    def anything_of_ours(self) -> set[str]:
        found = {f"passt {files.stem}" for files in passt.running_files(self.passt_dir)}
        fence = f"table inet {fence_table(self.passt_dir)}"
        if passt_account("auto") is not None and fence in nft("", "list", "tables"):
            found.add("guest fence")
        return found


class BridgeMode(Mode):
    name = "bridge"
    blocks_on_the_nic = True
    overlays_vnc = True
    backend_type = TapNetdev
    failure = (NetworkError, "master")

    def __init__(self, run: Path, namespace: str) -> None:
        self.namespace = namespace
        settings = NetworkSettings(mode="bridge", namespace=namespace, lease_seconds=120)
        self.bridge = BridgeNetwork(settings, POOL, run / "network")
        self.driver = self.bridge
        self.block_table = nic_firewall.table_name(settings.public_bridge)
        self.guard_table = spoof_guard.table_name(settings.public_bridge)
        self.vnc_table = vnc_overlay.table_name(settings.public_bridge)
        self.public = settings.public_bridge
        # An operator's link (a veth, not a bridge) holding the name of a VLAN's bridge.
        self.taken_vlan = "3a9c6b52-1d7e-4f08-a2b3-c4d5e6f7a8b9"
        subprocess.run(
            ["ip", "-n", namespace, "link", "add", self.bridge.vlan_bridge(self.taken_vlan),
             "type", "veth", "peer", "name", "veth-peer"],
            check=True, timeout=10,
        )  # fmt: skip

    def failing_nic(self) -> NicPlan:
        # Its ports are blocked and its tap made, then the tap cannot join the VLAN's "bridge".
        return NicPlan(SERVER, 2, "52:54:00:00:00:0f", vlan=self.taken_vlan, block=BLOCK)

    async def plumbing(self, nics: Sequence[NicPlan]) -> set[str]:
        found = set()
        links = link_names(self.namespace)
        rules = nft(self.namespace, "list", "table", "bridge", self.block_table)
        guards = nft(self.namespace, "list", "table", "bridge", self.guard_table)
        entries = self.bridge.dhcp.entries()
        for nic in nics:
            tap = self.bridge.tap_name(nic)
            if tap in links:
                found.add(f"tap {tap}")
            if nic_firewall.chain_name(tap) in rules:
                found.add(f"chain {tap}")
            if spoof_guard.chain_name(tap) in guards:
                found.add(f"guard {tap}")
            if self.bridge.entry_name(nic) in entries:
                found.add(f"dhcp entry {self.bridge.entry_name(nic)}")
        return found

    def offered(self, nic: NicPlan) -> str | None:
        entry = self.bridge.dhcp.entries().get(self.bridge.entry_name(nic))
        if entry is None:
            return None
        assert self.bridge.dhcp.pid() is not None, "a DHCP server serves the entry"
        mac, address = entry
        assert mac == nic.mac
        return address

    def blocked(self, nic: NicPlan) -> str:
        chain = nic_firewall.chain_name(self.bridge.tap_name(nic))
        return nft(self.namespace, "list", "chain", "bridge", self.block_table, chain)

    def vnc_overlaid(self, address: str) -> bool:
        listed = nft(self.namespace, "-j", "list", "set", "bridge", self.vnc_table, "guests")
        if not listed:
            return False
        items = json.loads(listed)["nftables"]
        elements = next(item["set"].get("elem", []) for item in items if "set" in item)
        return address in elements

    def anything_of_ours(self) -> set[str]:
        found = {f"link {name}" for name in link_names(self.namespace)
                 if name.startswith(("oh-t", "oh-v", self.public))}  # fmt: skip
        found -= {f"link {self.bridge.vlan_bridge(self.taken_vlan)}"}  # the operator's
        found |= {line for line in nft(self.namespace, "list", "tables").splitlines()
                  if "openhosting_" in line}  # fmt: skip
        if self.bridge.dhcp.pid() is not None:
            found.add("dnsmasq")
        return found


@pytest.fixture(params=["user", "bridge"])
async def mode(request: pytest.FixtureRequest) -> AsyncIterator[Mode]:
    if shutil.which("passt") is None or shutil.which("nft") is None:
        pytest.skip("passt and nft are needed (Debian packages passt, nftables)")
    with ExitStack() as cleanup:
        # Short: passt's socket path must fit a unix socket's.
        run = Path(tempfile.mkdtemp(prefix="ohn-", dir="/tmp"))
        run.chmod(0o755)
        cleanup.callback(shutil.rmtree, run, ignore_errors=True)
        made: Mode
        if request.param == "user":
            made = UserMode(run)
            cleanup.callback(kill_leftover_vms, run)  # passt, its tables and the fence
        else:
            made = BridgeMode(run, cleanup.enter_context(network_namespace()))
        try:
            yield made
        finally:
            await made.driver.close(idle=True)
            if isinstance(made, BridgeMode):
                await made.bridge.dhcp.stop()


async def test_attach_gives_each_nic_a_backend_and_detach_takes_it_all_away_twice(
    mode: Mode,
) -> None:
    await mode.driver.start()
    backends = await mode.driver.attach(NICS)
    assert sorted(backends) == [0, 1]
    assert all(isinstance(backend, mode.backend_type) for backend in backends.values())
    assert len(await mode.plumbing(NICS[:1])) > 0 and len(await mode.plumbing(NICS[1:])) > 0
    assert await mode.driver.counters(NICS) == Counters()  # no guest yet: no traffic

    await mode.driver.detach(NICS)
    assert await mode.plumbing(NICS) == set()
    await mode.driver.detach(NICS)  # again: harmless
    assert await mode.plumbing(NICS) == set()
    assert await mode.driver.counters(NICS) == Counters()


async def test_a_failed_attach_leaves_nothing_behind_nor_does_a_detach_after_it(
    mode: Mode,
) -> None:
    broken = [*NICS, mode.failing_nic()]
    error, words = mode.failure
    with pytest.raises(error, match=words):
        await mode.driver.attach(broken)
    assert await mode.plumbing(broken) == set()
    await mode.driver.detach(broken)  # as a server's stop would, after a failed start
    assert await mode.plumbing(broken) == set()
    # Nothing is wedged: the same NICs attach again.
    await mode.driver.attach(NICS)
    assert len(await mode.plumbing(NICS)) > 0
    await mode.driver.detach(NICS)


async def test_the_address_reported_is_the_one_offered(mode: Mode) -> None:
    held, anything = NICS
    silent = NicPlan(SERVER, 2, "52:54:00:00:00:0d", dhcp=False)
    await mode.driver.attach([held, anything, silent])
    # An address the server holds is what the guest is offered, in every mode.
    assert mode.driver.guest_address(held) == mode.offered(held) == HELD
    # Without one, a mode that takes `auto` from the pool offers nothing by itself; the other
    # offers its own.
    reported = mode.driver.guest_address(anything)
    assert (reported is None) == mode.driver.pool_for_auto
    assert mode.offered(anything) == reported
    assert mode.offered(silent) is None  # no nic:N:dhcp: no DHCP answer at all
    await mode.driver.detach([held, anything, silent])


async def test_blocking_and_unblocking_a_nics_ports(mode: Mode) -> None:
    held = NICS[0]
    await mode.driver.attach([held])
    if mode.blocks_on_the_nic:
        assert "dport 22" in mode.blocked(held) and "dport 53" in mode.blocked(held)
    more = NicPlan(held.server, held.index, held.mac, held.vlan, held.address,
                   parse_block_list("tcp/8000-8100", "nic:0:block"))  # fmt: skip
    await mode.driver.block(more)
    if mode.blocks_on_the_nic:
        assert "8000-8100" in mode.blocked(more) and "dport 22" not in mode.blocked(more)
    opened = NicPlan(held.server, held.index, held.mac, held.vlan, held.address)
    await mode.driver.block(opened)
    assert mode.blocked(opened) == ""
    await mode.driver.detach([held])


async def test_vnc_on_a_guests_address_where_the_mode_can(mode: Mode) -> None:
    await mode.driver.start()
    assert await mode.driver.open_vnc(HELD, 5901) is mode.overlays_vnc
    assert mode.vnc_overlaid(HELD) is mode.overlays_vnc
    await mode.driver.close_vnc(HELD)
    await mode.driver.close_vnc(HELD)  # again: harmless
    assert not mode.vnc_overlaid(HELD)

    own = "192.0.2.14"  # an address of the pool no guest holds, taken by the host
    assert await mode.driver.open_vnc_address(own, 5902) is mode.overlays_vnc
    assert mode.vnc_overlaid(own) is mode.overlays_vnc
    await mode.driver.close_vnc_address(own)
    await mode.driver.close_vnc_address(own)
    assert not mode.vnc_overlaid(own)


async def test_reconcile_keeps_running_servers_nics_and_an_idle_close_leaves_nothing(
    mode: Mode,
) -> None:
    await mode.driver.attach(NICS)
    await mode.driver.attach(OTHERS)
    await mode.driver.reconcile(NICS)  # the other server ended while no daemon ran
    assert await mode.plumbing(OTHERS) == set()
    kept = await mode.plumbing(NICS)
    assert kept and mode.offered(NICS[0]) == HELD
    if isinstance(mode, BridgeMode):  # the public NICs' spoof guard, rebuilt
        assert {f"guard {mode.bridge.tap_name(nic)}" for nic in NICS} <= kept

    await mode.driver.close(idle=False)  # a server runs: everything stays
    assert await mode.plumbing(NICS) == kept
    await mode.driver.close(idle=True)
    assert await mode.plumbing(NICS) == set()
    assert mode.anything_of_ours() == set()

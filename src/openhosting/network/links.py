"""Links on the host or in a network namespace: bridges, taps, and their counters.

Every change is an `ip` command with a time limit, made idempotent: creating what exists or
deleting what is gone is not an error. Links this platform creates carry an `ifalias`
(`LINK_MARKER`), so that cleaning up never touches a link an operator made, and so that an
operator sees in `ip link` which links are ours.
"""

from __future__ import annotations

import asyncio
import functools
import json
from dataclasses import dataclass
from pathlib import Path

from openhosting.network.errors import NetworkError
from openhosting.reverter import Reverter

IP_BINARY = "ip"
LINK_MARKER = "openhosting"
COMMAND_TIMEOUT = 10.0
NETNS_DIR = Path("/run/netns")  # where `ip netns add` pins namespaces
IFNAMSIZ = 15  # the longest Linux interface name


@dataclass(frozen=True)
class Counters:
    """Bytes and packets a link received and sent, from the host's side of the link."""

    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0

    def __add__(self, other: Counters) -> Counters:
        """The traffic of two links together (a server's NICs)."""
        return Counters(
            rx_bytes=self.rx_bytes + other.rx_bytes,
            tx_bytes=self.tx_bytes + other.tx_bytes,
            rx_packets=self.rx_packets + other.rx_packets,
            tx_packets=self.tx_packets + other.tx_packets,
        )

    def seen_from_the_other_end(self) -> Counters:
        """What one end of a link sends, the other receives (a tap's counters are the
        host's side: the guest's are these)."""
        return Counters(
            rx_bytes=self.tx_bytes,
            tx_bytes=self.rx_bytes,
            rx_packets=self.tx_packets,
            tx_packets=self.rx_packets,
        )


@dataclass(frozen=True)
class Link:
    """A link as `ip -j -s link show` describes it."""

    name: str
    master: str | None
    ours: bool
    counters: Counters


def ip_argv(namespace: str, *args: str) -> list[str]:
    """The `ip` command line for `args`, in `namespace` when one is given."""
    return [IP_BINARY, *(("-n", namespace) if namespace else ()), *args]


def netns_exec_argv(namespace: str, argv: list[str]) -> list[str]:
    """`argv` run inside `namespace` (`ip netns exec` execs in place: the pid is the program's)."""
    return [IP_BINARY, "netns", "exec", namespace, *argv] if namespace else list(argv)


def parse_links(text: str) -> dict[str, Link]:
    """The links of `ip -j -s link show` output, by name."""
    links: dict[str, Link] = {}
    for item in json.loads(text or "[]"):
        stats = item.get("stats64", {})
        rx, tx = stats.get("rx", {}), stats.get("tx", {})
        links[item["ifname"]] = Link(
            name=item["ifname"],
            master=item.get("master"),
            ours=item.get("ifalias") == LINK_MARKER,
            counters=Counters(
                rx_bytes=int(rx.get("bytes", 0)),
                tx_bytes=int(tx.get("bytes", 0)),
                rx_packets=int(rx.get("packets", 0)),
                tx_packets=int(tx.get("packets", 0)),
            ),
        )
    return links


def check_ifname(name: str) -> str:
    if not 0 < len(name) <= IFNAMSIZ or "/" in name or any(c.isspace() for c in name):
        raise NetworkError(f"not a usable interface name: {name!r}")
    return name


async def run_command(
    argv: list[str], timeout: float = COMMAND_TIMEOUT, stdin: str | None = None
) -> str:
    """Run `argv` (fed `stdin`); its standard output, or NetworkError with its message."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as error:
        raise NetworkError(f"cannot run {argv[0]}: {error}") from None
    try:
        stdout, stderr = await asyncio.wait_for(
            process.communicate(None if stdin is None else stdin.encode()), timeout
        )
    except TimeoutError:
        process.kill()
        await process.wait()
        raise NetworkError(f"{' '.join(argv)} did not finish within {timeout:g} s") from None
    if process.returncode != 0:
        message = stderr.decode(errors="replace").strip().replace("\n", "; ")
        raise NetworkError(f"{' '.join(argv)} failed: {message or process.returncode}")
    return stdout.decode(errors="replace")


def _is_gone(error: NetworkError) -> bool:
    text = str(error)
    return "Cannot find device" in text or "does not exist" in text


class Links:
    """The links of one network namespace (`""`: the host's)."""

    def __init__(self, namespace: str = "") -> None:
        self.namespace = namespace

    async def _ip(self, *args: str) -> str:
        return await run_command(ip_argv(self.namespace, *args))

    async def ensure_namespace(self) -> None:
        """Create the namespace if it does not exist yet (it is never deleted here)."""
        if not self.namespace or (NETNS_DIR / self.namespace).exists():
            return
        try:
            await run_command([IP_BINARY, "netns", "add", self.namespace])
        except NetworkError:
            if not (NETNS_DIR / self.namespace).exists():  # another process may have won
                raise
        await self._ip("link", "set", "lo", "up")

    def namespace_exists(self) -> bool:
        return not self.namespace or (NETNS_DIR / self.namespace).exists()

    async def all(self) -> dict[str, Link]:
        """Every link with its counters, in one command."""
        return parse_links(await self._ip("-j", "-s", "link", "show"))

    async def ensure_bridge(self, name: str, address: str | None = None) -> None:
        """Bridge `name` up, holding `address` (CIDR) if given; created (and marked ours)
        if missing, left as it is otherwise."""
        check_ifname(name)
        if name not in await self.all():
            try:
                await self._ip("link", "add", name, "type", "bridge")
                await self._ip("link", "set", name, "alias", LINK_MARKER)
            except NetworkError:
                if name not in await self.all():
                    raise
        if address is not None:
            await self._ip("addr", "replace", address, "dev", name)
        await self._ip("link", "set", name, "up")

    async def add_host_address(self, link: str, address: str) -> None:
        """The host holds `address` alone (/32) on `link` too; idempotent."""
        await self._ip("addr", "replace", f"{address}/32", "dev", link)

    async def remove_host_address(self, link: str, address: str) -> None:
        """Undo `add_host_address`; nothing to do when the address or link is gone."""
        try:
            await self._ip("addr", "del", f"{address}/32", "dev", link)
        except NetworkError as error:
            # This kernel says "Address not found" for an address the link does not hold.
            gone = ("Cannot assign", "Address not found")
            if not (_is_gone(error) or any(words in str(error) for words in gone)):
                raise

    async def add_tap(self, name: str, bridge: str) -> None:
        """A fresh tap `name` enslaved to `bridge` and up (a leftover one is replaced)."""
        check_ifname(name)
        await self.delete(name)
        async with Reverter() as revert:
            await self._ip("tuntap", "add", "dev", name, "mode", "tap")
            revert.add(functools.partial(self.delete, name))
            await self._ip("link", "set", name, "alias", LINK_MARKER)
            await self._ip("link", "set", name, "master", bridge, "up")
            revert.success()

    async def add_vxlan(
        self, name: str, vni: int, local: str, port: int, device: str = "", mtu: int = 0
    ) -> None:
        """A VXLAN device `name` for VNI `vni`, from `local` on UDP `port`, leaving by
        `device` when given, `mtu` when not 0, learning no addresses (the flood list says
        where frames go), marked ours and down."""
        check_ifname(name)
        argv = ["link", "add", name, *(("mtu", str(mtu)) if mtu else ()), "type", "vxlan"]
        argv += ["id", str(vni), "local", local, "dstport", str(port), "nolearning"]
        async with Reverter() as revert:
            await self._ip(*argv, *(("dev", device) if device else ()))
            revert.add(functools.partial(self.delete, name))
            await self._ip("link", "set", name, "alias", LINK_MARKER)
            revert.success()

    async def vxlan_of(self, name: str) -> tuple[int, str, int] | None:
        """The VNI, local address and UDP port of VXLAN device `name`; None when there is
        no such link or it is not a VXLAN device."""
        try:
            found = json.loads(await self._ip("-d", "-j", "link", "show", "dev", name) or "[]")
        except NetworkError as error:
            if _is_gone(error):
                return None
            raise
        info = found[0].get("linkinfo", {}) if found else {}
        if info.get("info_kind") != "vxlan":
            return None
        data = info.get("info_data", {})
        return int(data.get("id", -1)), str(data.get("local", "")), int(data.get("port", -1))

    async def set_master(self, name: str, bridge: str) -> None:
        """Link `name` a port of `bridge`, and up."""
        await self._ip("link", "set", name, "master", bridge, "up")

    async def delete(self, name: str) -> None:
        """Delete link `name`; nothing to do when it is gone."""
        try:
            await self._ip("link", "delete", name)
        except NetworkError as error:
            if not _is_gone(error):
                raise

    async def ports_of(self, bridge: str) -> list[str]:
        return sorted(link.name for link in (await self.all()).values() if link.master == bridge)

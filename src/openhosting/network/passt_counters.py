"""Traffic counters of user-mode NICs, counted in the host's kernel.

passt has no counters, and QEMU 7.2 none per netdev. But everything a user-mode guest sends
or receives beyond passt itself goes through sockets passt opens on the host. So each NIC's
passt starts in a cgroup of its own (the cgroup v2 hierarchy: only membership is used, no
controller, so a host with cgroup v1 controllers and the hybrid `unified` mount has it too),
and an nftables table of its own counts the packets of sockets in that cgroup: at the output
hook what the guest sent, at the input hook (nftables looks the socket up) what it received.
The kernel keeps counting while no daemon runs; the table and the cgroup go with the NIC.

What is counted is what passt moves for the guest on the host: IP packets with their
headers, TCP re-segmented by the host's stack (passt ends the guest's TCP and opens its own),
so bytes are close to the guest's and packets may differ. What passt answers itself (DHCP,
ARP) is not counted.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
from pathlib import Path

from openhosting.network.errors import NetworkError
from openhosting.network.links import Counters
from openhosting.network.nft import delete_if_present, run_nft
from openhosting.network.passt import PasstFiles

log = logging.getLogger("openhosting.network")

CGROUP_MOUNT = Path("/sys/fs/cgroup")  # nftables names cgroup v2 paths from here
GROUP_DIR = "openhosting-passt"
TABLE_PREFIX = "openhosting_nic_"
# The NICs' counting tables are the host's (passt runs in the host's network).
_host_nft = functools.partial(run_nft, "")


def cgroup_v2_root(mount: Path = CGROUP_MOUNT) -> Path | None:
    """Where the cgroup v2 hierarchy is mounted: the cgroup mount itself (a v2 host), its
    `unified` directory (a hybrid host), or None (v1 only: no counters)."""
    for candidate in (mount, mount / "unified"):
        if (candidate / "cgroup.procs").exists() and (candidate / "cgroup.stat").exists():
            return candidate
    return None


def platform_tag(passt_dir: Path) -> str:
    """Names this platform's tables and groups apart from another platform's on the host."""
    return hashlib.sha256(str(passt_dir).encode()).hexdigest()[:10]


def table_name(tag: str, files: PasstFiles) -> str:
    return f"{TABLE_PREFIX}{tag}_{files.server.replace('-', '')}_{files.index}"


def counter_ruleset(table: str, group: str, level: int) -> str:
    """The NIC's table: counters `rx` and `tx` of the sockets in cgroup `group` (a path from
    the cgroup mount, `level` deep in the v2 hierarchy) (pure). Made anew, from 0."""
    return f"""\
table inet {table}
delete table inet {table}
table inet {table} {{
  counter rx {{ }}
  counter tx {{ }}
  chain output {{
    type filter hook output priority 0; policy accept;
    socket cgroupv2 level {level} "{group}" counter name "tx"
  }}
  chain input {{
    type filter hook input priority 0; policy accept;
    socket cgroupv2 level {level} "{group}" counter name "rx"
  }}
}}
"""


def parse_counters(text: str) -> Counters:
    """The guest's traffic from `nft -j list table` of a NIC's table (pure): the input
    hook's counter is what the guest received, the output hook's what it sent."""
    values: dict[str, tuple[int, int]] = {}
    for item in json.loads(text or "{}").get("nftables", []):
        counter = item.get("counter")
        if counter is not None:
            values[counter["name"]] = (int(counter["bytes"]), int(counter["packets"]))
    rx, tx = values.get("rx", (0, 0)), values.get("tx", (0, 0))
    return Counters(rx_bytes=rx[0], tx_bytes=tx[0], rx_packets=rx[1], tx_packets=tx[1])


class PasstCounters:
    """The counters of the passt NICs of one platform (see the module's docstring)."""

    def __init__(self, passt_dir: Path, mount: Path = CGROUP_MOUNT) -> None:
        self._tag = platform_tag(passt_dir)
        self._mount = mount
        self._root = cgroup_v2_root(mount)
        self._warned = False

    @property
    def available(self) -> bool:
        """Counting needs root (cgroups, nftables) and a cgroup v2 hierarchy."""
        return os.geteuid() == 0 and self._root is not None

    def table_of(self, files: PasstFiles) -> str:
        return table_name(self._tag, files)

    def group_of(self, files: PasstFiles) -> Path:
        assert self._root is not None
        return self._root / GROUP_DIR / f"{self._tag}-{files.stem}"

    def prepare(self, files: PasstFiles) -> Path | None:
        """The NIC's own cgroup, made empty, whose `cgroup.procs` its passt must join before
        it opens any socket; None where nothing can be counted."""
        if not self.available:
            if not self._warned:
                log.warning("event=nic_counters_missing reason=%s",
                            "no_cgroup_v2" if os.geteuid() == 0 else "not_root")  # fmt: skip
                self._warned = True
            return None
        group = self.group_of(files)
        group.mkdir(parents=True, exist_ok=True)
        return group / "cgroup.procs"

    async def watch(self, files: PasstFiles) -> None:
        """Count the NIC from 0, once its passt is in its group."""
        if not self.available:
            return
        group = self.group_of(files)
        relative = group.relative_to(self._mount)
        level = len(group.relative_to(self._root or self._mount).parts)
        ruleset = counter_ruleset(self.table_of(files), str(relative), level)
        await _host_nft("-f", "-", stdin=ruleset)

    async def counters(self, files: PasstFiles) -> Counters:
        if not self.available:
            return Counters()
        try:
            text = await _host_nft("-j", "list", "table", "inet", self.table_of(files))
        except NetworkError:
            return Counters()  # not counted (yet): its passt is starting or gone
        return parse_counters(text)

    async def forget(self, files: PasstFiles) -> None:
        """Remove the NIC's table and group (its passt has ended); idempotent."""
        if not self.available:
            return
        await delete_if_present(_host_nft, "table", "inet", self.table_of(files))
        group = self.group_of(files)
        try:
            group.rmdir()
        except FileNotFoundError:
            pass
        except OSError as error:  # a process still in it: the next forget or start retries
            log.warning("event=nic_group_busy nic=%s error=%s", files.stem, error)
        with contextlib.suppress(OSError):  # other NICs' groups still in it
            group.parent.rmdir()

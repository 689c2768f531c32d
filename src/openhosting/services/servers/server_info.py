"""The info of a server (docs/api.md §5): its configuration, its status and, while it runs, its
live figures (QMP counters, addresses, VNC)."""

from dataclasses import dataclass, field

from openhosting.hypervisor.driver import BlockStats
from openhosting.model.server import ServerConfig
from openhosting.network.links import Counters
from openhosting.vnc.ports import VNC_BASE_PORT
from openhosting.wire.payload import Value

# Keys whose values are numbers in JSON (docs/api.md §2).
NUMERIC_KEYS = frozenset({"cpu", "mem", "smp", "smp:cores", "started", "vnc:port"})
NUMERIC_SUFFIXES = (":bytes", ":requests", ":packets")


@dataclass(frozen=True)
class LiveFigures:
    """What only a running VM can tell."""

    started: int
    nic0_address: str | None
    vnc_address: str | None
    vnc_port: int | None
    blockstats: dict[str, BlockStats] = field(default_factory=dict)
    traffic: Counters = field(default_factory=Counters)  # of all its NICs


def _number_or_text(key: str, value: str) -> Value:
    if (key in NUMERIC_KEYS or key.endswith(NUMERIC_SUFFIXES)) and value.isdigit():
        return int(value)
    return value


def server_info(
    uuid: str,
    user: str,
    status: str,
    config: ServerConfig,
    live: LiveFigures | None,
    host: str = "",
    host_offline: bool = False,
) -> dict[str, Value]:
    """The keys of `info` in a stable order: identity, configuration, then live figures;
    `host`: the host it runs (or would start) on, `host_offline` when that one is (the
    status is then the last known)."""
    info: dict[str, Value] = {"server": uuid}
    for key, value in config.to_properties().items():
        if key == "nic:0:dhcp" and live is not None and live.nic0_address:
            value = live.nic0_address  # the seed shows the address the server holds
        elif key == "vnc:ip" and live is not None and live.vnc_address:
            value = live.vnc_address
        if key == "smp" and live is not None:
            value = str(config.smp_cores)  # a running server has a number of vCPUs, not `auto`
        info[key] = _number_or_text(key, value)
        if key == "vnc:ip":
            info["vnc"] = info[key]  # both spellings are read by clients
    if "vnc:ip" not in info and live is not None and live.vnc_address:
        # A password without `vnc:ip` still gives the server a VNC server: say where it is.
        info["vnc:ip"] = info["vnc"] = live.vnc_address
    info["user"] = user
    info["status"] = status
    if host:  # ours
        info["host"] = host
        if host_offline:
            info["host:state"] = "offline"
    if live is None:
        return info
    info["started"] = live.started
    if live.nic0_address and config.nics and config.nics[0].index == 0:
        info["nic:0:dhcp:ip"] = live.nic0_address
    if live.vnc_port is not None and live.vnc_port != VNC_BASE_PORT:
        info["vnc:port"] = live.vnc_port
    info["rx"], info["tx"] = live.traffic.rx_bytes, live.traffic.tx_bytes
    info["rx:packets"], info["tx:packets"] = live.traffic.rx_packets, live.traffic.tx_packets
    for attachment in config.drives:
        stats = live.blockstats.get(attachment.slot, BlockStats(0, 0, 0, 0))
        info[f"{attachment.slot}:read:bytes"] = stats.read_bytes
        info[f"{attachment.slot}:read:requests"] = stats.read_requests
        info[f"{attachment.slot}:write:bytes"] = stats.write_bytes
        info[f"{attachment.slot}:write:requests"] = stats.write_requests
    return info

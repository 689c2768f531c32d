"""The control plane's connections to agents need the cluster's control certificate: without
one (no `cluster init` in this state directory) a connection is a clear error naming the
host, for the driver and for the drive storage alike. A host whose name no certificate can
carry is refused as such."""

import socket
from pathlib import Path

import pytest

from openhosting.agent.pki import init_cluster
from openhosting.errors import SystemError_
from openhosting.hypervisor.agent_connector import agent_connector, storage_connector
from openhosting.hypervisor.errors import HypervisorError


async def test_without_a_cluster_certificate_an_agent_is_not_reached(tmp_path: Path) -> None:
    connect = agent_connector(tmp_path)
    with pytest.raises(HypervisorError, match="host agent hv1: no cluster certificate here"):
        await connect("hv1", "127.0.0.1:9", lambda _event: None)


def test_without_a_cluster_certificate_a_hosts_drives_are_not_reached(tmp_path: Path) -> None:
    connect = storage_connector(tmp_path)
    with pytest.raises(SystemError_, match="Host hv1's drives: no cluster certificate here"):
        connect("hv1", "127.0.0.1:9")


async def test_a_host_whose_name_no_certificate_can_carry_is_refused_not_a_crash(
    tmp_path: Path,
) -> None:
    # A row written before `host set` checked names: TLS cannot even ask for such a server
    # name (Python's IDNA encoding refuses it). The daemon at its start, and its watch,
    # connect to every host's agent: one such row must leave that host out, not end them.
    init_cluster(tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as listening:  # TCP answers; TLS is tried
        address = f"127.0.0.1:{listening.getsockname()[1]}"
        connect = agent_connector(tmp_path)
        for name in ("x..y", "", "a" * 64, "Bad Name"):
            with pytest.raises(HypervisorError, match="not a host name"):
                await connect(name, address, lambda _event: None)

"""The control plane's connections to agents need the cluster's control certificate: without
one (no `cluster init` in this state directory) a connection is a clear error naming the
host, for the driver and for the drive storage alike."""

from pathlib import Path

import pytest

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

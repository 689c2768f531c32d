"""Which storage holds a drive's bytes (services/cluster/host_storages.py): an agent's only when the
drive's host has one; this host's files for this host, a host without an agent (this host
under a former name, say), and wherever no connector was given; none for a host no row
names."""

import ssl
import uuid
from pathlib import Path

import pytest

from openhosting.agent.host_connection import HostConnection
from openhosting.errors import FullError
from openhosting.services.platform import open_platform
from openhosting.storage.drive_storage import DriveStorage
from openhosting.storage.remote_storage import RemoteDriveStorage
from tests.conftest import config_in

DRIVE = str(uuid.uuid4())


def test_only_a_host_with_an_agent_has_its_drives_elsewhere(tmp_path: Path) -> None:
    platform = open_platform(config_in(tmp_path, host={"name": "hv-here"}))
    try:
        platform.hosts.register()
        platform.hosts.set_agent("hv-a", "127.0.0.1:7430")
        platform.hosts.set_agent("hv-old", "10.0.0.9:7430")
        platform.hosts.set_agent("hv-old", "")  # a row, its agent removed
        storages, local = platform.drives.storages, platform.drives.local_storage
        assert all(storages.of(host) is local for host in ("", "hv-here", "hv-a", "hv-x"))
        made: list[str] = []

        def connect(host: str, address: str) -> DriveStorage:
            made.append(f"{host} {address}")
            return RemoteDriveStorage(HostConnection(host, address, ssl.create_default_context()))

        storages.connector = connect
        remote = storages.of("hv-a")
        assert isinstance(remote, RemoteDriveStorage) and storages.of("hv-a") is remote
        assert made == ["hv-a 127.0.0.1:7430"]  # one per host
        for host in ("", "hv-here", "hv-old"):
            assert storages.of(host) is local and storages.holder(host) == "hv-here"
        assert storages.holder("hv-a") == "hv-a"
        gone = storages.of("hv-gone")  # no such host
        assert not gone.is_available(DRIVE, "disk")
        with pytest.raises(FullError, match="hv-gone"):
            gone.disk_path(DRIVE, "disk")
    finally:
        platform.close()

"""A host's drive served over NBD to another host (hypervisor/nbd_exports.py): the
qemu-storage-daemon command line as text, and a real one serving a file over TLS of a
cluster CA: the client host's certificate reads it, another host's is refused, a client
that does not find the exporting host's name refuses it, and the export ends by its pid."""

import asyncio
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from openhosting.agent.main import client_dn
from openhosting.agent.pki import add_host, init_cluster
from openhosting.hypervisor.driver import ExportRequest
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.migration import MigrationTls, write_qemu_tls_dir
from openhosting.hypervisor.nbd_exports import (
    PIDFILE,
    DriveExports,
    QsdExport,
    build_qsd_argv,
    export_pid,
)
from openhosting.hypervisor.spec import NbdSource

SERVER = "0f962616-2071-4173-be79-7dd084271edf"
DRIVE = "4af85ed3-0caa-4736-8a26-a33d7de0a122"
MARKER = b"OHNBDEXPORT"


def test_the_daemon_serves_the_file_over_tls_to_the_client_hosts_certificate_only() -> None:
    export = QsdExport(
        path=Path("/var/lib/oh/drives/d.img"),
        source=NbdSource("10.0.0.12", 49160, DRIVE, "hv-b"),
        client_dn=client_dn("hv-a"),
        tls_dir=Path("/var/lib/oh/migration-tls"),
        pidfile=Path(f"/run/oh/nbd-exports/{SERVER}/{DRIVE}/qsd.pid"),
    )
    assert build_qsd_argv(export) == [
        "qemu-storage-daemon",
        "--object",
        "tls-creds-x509,id=tls,dir=/var/lib/oh/migration-tls,endpoint=server,verify-peer=on",
        "--object",
        # The subject as QEMU prints a peer's: commas doubled, QEMU's escape.
        "authz-simple,id=authz,identity=O=openhosting cluster,,OU=host,,CN=hv-a",
        "--blockdev",
        "driver=file,node-name=file,filename=/var/lib/oh/drives/d.img,read-only=off,discard=unmap",
        "--nbd-server",
        "addr.type=inet,addr.host=10.0.0.12,addr.port=49160,tls-creds=tls,tls-authz=authz,"
        "max-connections=1",
        "--export",
        f"nbd,id=export,node-name=file,name={DRIVE},writable=on",
        "--pidfile",
        f"/run/oh/nbd-exports/{SERVER}/{DRIVE}/qsd.pid",
        "--daemonize",
    ]


def test_a_pid_counts_only_while_its_command_line_names_the_pidfile(tmp_path: Path) -> None:
    pidfile = tmp_path / PIDFILE
    pidfile.write_text(f"{os.getpid()}\n")  # alive, but not an export of this pidfile
    assert export_pid(pidfile) is None
    pidfile.write_text("not a pid\n")
    assert export_pid(pidfile) is None
    assert export_pid(tmp_path / "none" / PIDFILE) is None


def test_an_export_request_names_a_drive_and_a_tier_not_a_path() -> None:
    with pytest.raises(ValueError):
        ExportRequest(SERVER, "../../etc/shadow", "ssd", "hv-a")
    with pytest.raises(ValueError):
        ExportRequest(SERVER, DRIVE, "../x", "hv-a")
    with pytest.raises(ValueError):
        ExportRequest("srv", DRIVE, "ssd", "hv-a")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Path]:
    """A cluster CA with hosts hv-a, hv-b and hv-c, each laid out for QEMU in DIR/NAME."""
    if shutil.which("qemu-storage-daemon") is None or shutil.which("qemu-io") is None:
        pytest.skip("QEMU's tools are not installed (Debian packages qemu-system-x86, qemu-utils)")
    state = tmp_path / "state"
    init_cluster(state)
    for name in ("hv-a", "hv-b", "hv-c"):
        bundle = add_host(state, name, tmp_path / f"bundle-{name}")
        write_qemu_tls_dir(bundle.ca_cert, bundle.cert, bundle.key, tmp_path / name)
    yield tmp_path


def free_ports(count: int) -> range:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        first = int(probe.getsockname()[1])
    return range(first, first + count)


def read_as(cluster: Path, host: str, source: NbdSource, tls_hostname: str = "") -> str:
    """qemu-io's answer to a read of the export's first bytes, as host `host`'s client."""
    options = (
        f"driver=nbd,server.type=inet,server.host={source.host},server.port={source.port},"
        f"export={source.export},tls-creds=tls,tls-hostname={tls_hostname or source.tls_hostname}"
    )
    answer = subprocess.run(
        ["qemu-io", "--object", f"tls-creds-x509,id=tls,dir={cluster / host},endpoint=client",
         "--image-opts", options, "-r", "-c", "read -v 0 16"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return answer.stdout + answer.stderr


def test_only_the_server_hosts_certificate_reads_the_export_until_it_ends(cluster: Path) -> None:
    drive_file = cluster / "drive.img"
    drive_file.write_bytes(MARKER + bytes(1 << 20))
    tls = MigrationTls(cluster / "hv-b", "hv-b")
    exports = DriveExports(cluster / "run", tls, "127.0.0.1", free_ports(4), client_dn)
    request = ExportRequest(SERVER, DRIVE, "ssd", client="hv-a")
    try:
        source = asyncio.run(exports.export(request, drive_file))
        assert (source.host, source.export, source.tls_hostname) == ("127.0.0.1", DRIVE, "hv-b")
        assert exports.servers() == [SERVER]
        assert "OHNBDEXPORT" in read_as(cluster, "hv-a", source)
        # Another host of the same CA is refused, and so is an exporter whose certificate
        # does not name the host the client expects.
        assert "OHNBDEXPORT" not in read_as(cluster, "hv-c", source)
        refused = read_as(cluster, "hv-a", source, tls_hostname="hv-c")
        assert "does not match the hostname hv-c" in refused
    finally:
        asyncio.run(exports.end(SERVER))
    assert exports.servers() == []
    assert not (cluster / "run" / "nbd-exports" / SERVER).exists()
    assert "OHNBDEXPORT" not in read_as(cluster, "hv-a", source)  # nothing listens


def test_an_export_without_a_cluster_address_or_file_is_refused(cluster: Path) -> None:
    tls = MigrationTls(cluster / "hv-b", "hv-b")
    request = ExportRequest(SERVER, DRIVE, "ssd", client="hv-a")
    unaddressed = DriveExports(cluster / "run", tls, "", free_ports(1), client_dn)
    with pytest.raises(HypervisorError, match="migration_address"):
        asyncio.run(unaddressed.export(request, cluster / "drive.img"))
    exports = DriveExports(cluster / "run", tls, "127.0.0.1", free_ports(1), client_dn)
    with pytest.raises(HypervisorError, match="no file"):
        asyncio.run(exports.export(request, cluster / "missing.img"))
    with pytest.raises(HypervisorError, match="Invalid host name"):
        (cluster / "drive.img").write_bytes(bytes(512))
        asyncio.run(
            exports.export(ExportRequest(SERVER, DRIVE, "ssd", "HV,A"), cluster / "drive.img")
        )
    assert exports.servers() == []

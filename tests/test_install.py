"""`make install` (scripts/install) into a staging DESTDIR: the layout a Debian service has,
the systemd unit checked as text (systemd need not run here), and the installed commands
run as the unit runs them.

The installer's virtualenv is this test run's own (VENV_FROM): building one from the lock
would need the package registry. Everything else is what an install on a host does.
"""

import base64
import http.client
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from openhosting.config import Config, load_config
from testbed.daemon_process import free_port, stop_process, wait_listening
from tests.conftest import REPO

COMMANDS = ("openhostingd", "openhosting-admin", "openhosting", "openhosting-upload",
            "openhosting-download")  # fmt: skip
UNIT = Path("etc/systemd/system/openhostingd.service")
CONFIG = Path("etc/openhosting/openhosting.toml")
EXPORTS = re.compile(r"export OHURI=(\S+)\nexport OHAUTH=(\S+)\n")


def install(destdir: Path, script: str = "install") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OH_")}
    env.update(DESTDIR=str(destdir), VENV_FROM=sys.prefix)
    return subprocess.run(
        [str(REPO / "scripts" / script)],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as sections of keys, each with every value it is given, in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"continued lines are not checked here: {raw}"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"not a setting: {raw}"
        current.setdefault(key, []).append(value)
    return sections


@pytest.fixture(scope="module")
def destdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("destdir")
    install(root)
    return root


def test_the_layout_is_a_debian_service_s(destdir: Path) -> None:
    venv = destdir / "usr/local/lib/openhosting"
    for command in COMMANDS:
        link = destdir / "usr/local/bin" / command
        # Relative, so it holds both here and once the tree is copied into /.
        assert os.readlink(link) == f"../lib/openhosting/bin/{command}"
        assert link.resolve() == (venv / "bin" / command).resolve()
        assert os.access(link, os.X_OK)
    assert stat.S_IMODE((destdir / "var/lib/openhosting").stat().st_mode) == 0o700
    assert (destdir / UNIT).is_file() and (destdir / CONFIG).is_file()
    # Nothing installed names the staging directory.
    for path in (destdir / "etc").rglob("*"):
        if path.is_file():
            assert str(destdir) not in path.read_text(), path


def test_the_configuration_lists_every_setting_and_puts_the_state_in_var_lib(
    destdir: Path,
) -> None:
    text = (destdir / CONFIG).read_text()
    assert text == (destdir / CONFIG).with_suffix(".toml.sample").read_text()
    installed = load_config(destdir / CONFIG, env={})
    assert installed == Config(state_dir="/var/lib/openhosting")
    assert tomllib.loads(text) == {
        "state_dir": "/var/lib/openhosting",
        **{
            name: {}
            for name in ("api", "storage", "hypervisor", "network", "billing", "store", "host")
        },
    }
    assert '# listen = "127.0.0.1:8080"' in text  # defaults are shown, commented out


def test_the_unit_runs_the_installed_daemon_and_leaves_vms_running_on_stop(
    destdir: Path,
) -> None:
    text = (destdir / UNIT).read_text()
    assert "@" not in text.replace("multi-user.target", "")  # every placeholder filled in
    unit = parse_unit(text)
    service = unit["Service"]
    (exec_start,) = service["ExecStart"]
    command, *args = exec_start.split()
    assert command == "/usr/local/bin/openhostingd"
    assert os.access(destdir / command.lstrip("/"), os.X_OK)
    assert args == ["--config", "/etc/openhosting/openhosting.toml"]
    assert service["Type"] in (["simple"], ["exec"])  # no sd_notify: not `notify`
    # Stopping kills the daemon alone: the QEMU processes in its cgroup keep running.
    assert service["KillMode"] == ["process"]
    assert service["StateDirectory"] == ["openhosting"]
    assert service["StateDirectoryMode"] == ["0700"]
    assert service["RuntimeDirectory"] == ["openhosting"]
    # /run/openhosting holds the VMs' pidfiles and sockets: it must outlive the daemon.
    assert service["RuntimeDirectoryPreserve"] == ["yes"]
    assert service["ConfigurationDirectory"] == ["openhosting"]
    capabilities = {cap for line in service["CapabilityBoundingSet"] for cap in line.split()}
    assert {"CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_SETUID", "CAP_SETGID", "CAP_CHOWN",
            "CAP_KILL", "CAP_NET_BIND_SERVICE"} <= capabilities  # fmt: skip
    devices = {line.split()[0] for line in service["DeviceAllow"]}
    assert {"/dev/kvm", "/dev/net/tun"} <= devices
    assert service["ProtectSystem"] == ["strict"]
    assert service["ProtectHome"] == ["yes"] and service["PrivateTmp"] == ["yes"]
    # Settings that would break QEMU or the network layer are not there.
    for breaking in ("MemoryDenyWriteExecute", "ProtectControlGroups", "PrivateDevices",
                     "PrivateNetwork", "ProtectKernelTunables", "ProtectProc"):  # fmt: skip
        assert breaking not in service, breaking
    assert "StandardOutput" not in service  # the journal, systemd's default
    assert "OH_FIRST_USER=no" in " ".join(service["Environment"]).split()
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_systemd_reads_every_line_of_the_unit(destdir: Path) -> None:
    """systemd's own parser, offline (systemd need not run): no unknown key, no bad value."""
    # scripts/install-system-packages installs systemd for this (it need not be running).
    assert shutil.which("systemd-analyze") is not None, "systemd-analyze is missing"
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "--recursive-errors=no", destdir / UNIT],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    complaints = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        # The programs are installed under DESTDIR, not on this host.
        if line.strip() and "is not executable" not in line
    ]
    assert complaints == []


def test_the_installed_commands_init_and_serve_as_the_unit_starts_them(
    destdir: Path, tmp_path: Path
) -> None:
    # The installed configuration, pointed at temporary directories as an operator edits it.
    config = tmp_path / "openhosting.toml"
    text = (destdir / CONFIG).read_text()
    text = text.replace('state_dir = "/var/lib/openhosting"', f'state_dir = "{tmp_path}/state"')
    text = text.replace('# run_dir = ""', f'run_dir = "{tmp_path}/run"')
    config.write_text(text)
    bin_dir = destdir / "usr/local/bin"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OH_")}
    unit_env = parse_unit((destdir / UNIT).read_text())["Service"]["Environment"]
    env.update(dict(pair.split("=", 1) for line in unit_env for pair in line.split()))

    help_text = subprocess.run(
        [bin_dir / "openhostingd", "--help"], capture_output=True, text=True, timeout=30,
        check=True,
    ).stdout  # fmt: skip
    assert "--config" in help_text

    port = free_port()
    out, err = tmp_path / "daemon.out", tmp_path / "daemon.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        daemon = subprocess.Popen(
            [bin_dir / "openhostingd", "--config", config, "--listen", f"127.0.0.1:{port}"],
            env=env, stdout=stdout, stderr=stderr,
        )  # fmt: skip
    try:
        wait_listening(port, daemon, log=err)
        init = subprocess.run(
            [bin_dir / "openhosting-admin", "--config", config, "init"],
            env=env, capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        exports = EXPORTS.search(init.stdout)
        assert exports, init.stdout
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        auth = base64.b64encode(exports.group(2).encode()).decode()
        connection.request("GET", "/drives/list", headers={"Authorization": f"Basic {auth}"})
        assert connection.getresponse().status == 200
        connection.close()
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            assert daemon.wait(timeout=30) == 0  # a clean stop, as `systemctl stop` asks
        finally:
            stop_process(daemon, signal.SIGKILL)
    assert "event=stopped" in err.read_text()
    # Under the unit, standard output is the journal: no user was made and no secret printed.
    assert out.read_text() == ""
    assert exports.group(2).split(":")[1] not in err.read_text()


def test_a_second_install_keeps_the_edited_configuration_and_renews_the_sample(
    tmp_path: Path,
) -> None:
    install(tmp_path)
    (tmp_path / CONFIG).write_text('state_dir = "/srv/openhosting"\n')
    sample = (tmp_path / CONFIG).with_suffix(".toml.sample")
    sample.write_text("old\n")
    result = install(tmp_path)
    assert (tmp_path / CONFIG).read_text() == 'state_dir = "/srv/openhosting"\n'
    assert "Kept /etc/openhosting/openhosting.toml" in result.stdout
    assert load_config(sample, env={}) == Config(state_dir="/var/lib/openhosting")


def test_uninstall_removes_the_programs_and_keeps_configuration_and_state(
    tmp_path: Path,
) -> None:
    install(tmp_path)
    install(tmp_path, "uninstall")
    assert not (tmp_path / UNIT).exists()
    assert not (tmp_path / "usr/local/lib/openhosting").exists()
    assert not any((tmp_path / "usr/local/bin").iterdir())
    assert (tmp_path / CONFIG).is_file() and (tmp_path / "var/lib/openhosting").is_dir()
    assert (Path(sys.prefix) / "bin" / "openhostingd").exists()  # the linked venv is intact

"""`openhosting-admin host suspend|resume|drain` act only through the daemon of the platform
the tool names: another platform's daemon on the metrics address it was given refuses before
it does anything (the refusal comes ahead of the work in api/ops.py; its 409 in
tests/api/test_host_drain_listener.py)."""

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.daemon_process import BIN, DaemonProcess, create_user


@pytest.fixture
def other_platform(tmp_path: Path) -> Iterator[DaemonProcess]:
    """A running platform of its own (its state directory, its metrics port)."""
    state = tmp_path / "other"
    create_user(state)
    daemon = DaemonProcess(state, tmp_path / "other.log")
    try:
        yield daemon
    finally:
        daemon.stop()


def admin(state: Path, metrics_port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "openhosting-admin"), "--state-dir", str(state), *args],
        env={"PATH": "/usr/bin:/bin", "OH_API_METRICS_LISTEN": f"127.0.0.1:{metrics_port}"},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("command", [["suspend"], ["resume"], ["drain", "vm"]], ids=" ".join)
def test_the_daemon_of_another_platform_refuses_and_is_named(
    other_platform: DaemonProcess, tmp_path: Path, command: list[str]
) -> None:
    # Two platforms on one host, the operator's shell still holding the first one's
    # OH_API_METRICS_LISTEN: `host suspend` of the second dumped the first one's servers.
    mine = tmp_path / "mine"
    assert admin(mine, other_platform.metrics_port, "init").returncode == 0
    done = admin(mine, other_platform.metrics_port, "host", *command)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (
        f"openhosting-admin: The openhostingd on 127.0.0.1:{other_platform.metrics_port}"
        " (api.metrics_listen) is another platform's: this openhostingd serves the platform"
        f" in {other_platform.state_dir}, not the one in {mine}. Name this platform's metrics"
        " address: the --config its daemon reads, or OH_API_METRICS_LISTEN as its daemon was"
        " given it\n"
    )


def test_the_daemon_of_the_platform_named_does_it(other_platform: DaemonProcess) -> None:
    done = admin(other_platform.state_dir, other_platform.metrics_port, "host", "resume")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_host_drain_asks_for_the_host_named_whatever_its_characters(
    other_platform: DaemonProcess,
) -> None:
    # The name went into the URL as typed: `hv-a?x=1` or `hv-a#2` asked the daemon to drain
    # hv-a, a space or a non-ASCII letter was a traceback of the tool's HTTP client.
    for name in ["hv-a?x=1", "hv-a#2", "a b", "x/y", "../suspend", "h\u00e9"]:
        done = admin(other_platform.state_dir, other_platform.metrics_port, "host", "drain", name)
        assert (done.returncode, done.stdout) == (1, ""), name
        assert done.stderr == (
            f"openhosting-admin: openhostingd refused host drain: Host {name} is not registered\n"
        )

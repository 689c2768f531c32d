"""The tests' daemons are started on ports of their own, and a start is only taken for one
when the daemon itself listens (testbed/daemon_process.py)."""

import socket
from pathlib import Path

import pytest

from testbed.daemon_process import DaemonProcess, free_port


def test_free_port_never_hands_out_a_port_twice() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)


def test_a_daemon_whose_port_another_process_holds_is_not_taken_for_started(
    tmp_path: Path,
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        # Something answers on the port, but it is not the daemon, which fails to bind.
        with pytest.raises(AssertionError, match="address already in use"):
            DaemonProcess(tmp_path / "state", tmp_path / "log", port=port)

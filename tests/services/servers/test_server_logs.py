"""What is kept of destroyed servers' serial logs, on real files."""

import dataclasses
import os
import uuid
from pathlib import Path

import pytest

from openhosting.config import Config, ConfigError, load_config
from openhosting.hypervisor.qemu_driver import serial_log_limit
from openhosting.hypervisor.serial_log import read_log
from openhosting.services.servers.server_logs import SECONDS_PER_DAY, ServerLogs


def config_with(tmp_path: Path, **hypervisor: int) -> Config:
    config = load_config(env={}, overrides={"state_dir": str(tmp_path / "state")})
    return dataclasses.replace(
        config, hypervisor=dataclasses.replace(config.hypervisor, **hypervisor)
    )


def run_dir_with_log(tmp_path: Path, content: bytes) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    (run_dir / "serial.log").write_bytes(content)
    return run_dir


def last_log(config: Config, run_dir: Path) -> bytes:
    """The log of `run_dir` within the bound, as the QEMU driver reads it."""
    limit = serial_log_limit(config.hypervisor)
    return read_log(run_dir / "serial.log", limit.files, limit.total_bytes)


def test_the_kept_log_is_the_last_of_the_bound(tmp_path: Path) -> None:
    config = config_with(tmp_path, serial_log_kib=1, serial_log_files=2)
    logs = ServerLogs(config)
    server = str(uuid.uuid4())
    run_dir = run_dir_with_log(tmp_path, b"x" * 5000 + b"the end\n")
    (run_dir / "serial.log.1").write_bytes(b"older\n")
    logs.keep(server, last_log(config, run_dir))
    kept = logs.kept_path(server).read_bytes()
    assert len(kept) == 2048 and kept.endswith(b"the end\n")
    # The live log while there is one; once the run directory is gone, the kept one.
    assert logs.read(server, b"live\n") == b"live\n"
    assert logs.read(server, None) == kept
    assert logs.read(str(uuid.uuid4()), None) is None


def test_kept_logs_are_pruned_after_their_retention_only(tmp_path: Path) -> None:
    logs = ServerLogs(config_with(tmp_path, serial_log_retention_days=2))
    old, young = str(uuid.uuid4()), str(uuid.uuid4())
    logs.keep(old, b"boot\n")
    logs.keep(young, b"boot\n")
    three_days_ago = logs.kept_path(old).stat().st_mtime - 3 * SECONDS_PER_DAY
    os.utime(logs.kept_path(old), (three_days_ago, three_days_ago))
    assert logs.prune() == 1
    assert not logs.kept_path(old).exists() and logs.kept_path(young).exists()


def test_a_retention_of_zero_keeps_nothing(tmp_path: Path) -> None:
    logs = ServerLogs(config_with(tmp_path, serial_log_retention_days=0))
    server = str(uuid.uuid4())
    logs.keep(server, b"boot\n")
    assert not logs.kept_path(server).exists()


@pytest.mark.parametrize("setting", ["serial_log_kib", "serial_log_files"])
def test_a_log_without_room_is_a_configuration_error(tmp_path: Path, setting: str) -> None:
    with pytest.raises(ConfigError, match="at least 1"):
        serial_log_limit(config_with(tmp_path, **{setting: 0}).hypervisor)

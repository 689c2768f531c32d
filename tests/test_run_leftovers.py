"""Tests leave nothing under /run/openhosting: every test has a run directory of its own
(tests/conftest.py, own_run_dir), and the session fails on a default run directory that one of
its tests left (pytest_sessionfinish)."""

import os
from pathlib import Path

from openhosting.config import load_config
from openhosting.services.platform import open_platform
from tests.conftest import run_entries_made_under


async def test_a_platform_the_test_configures_itself_runs_in_the_tests_directory(
    tmp_path: Path, own_run_dir: Path
) -> None:
    config = load_config(env={}, overrides={"state_dir": str(tmp_path / "state")})
    platform = open_platform(config)
    try:
        await platform.servers.recover()  # makes the network helpers' directory
        await platform.servers.close()
    finally:
        platform.close()
    assert config.run_path.parent == own_run_dir
    assert (config.run_path / "network").is_dir()


def test_a_process_the_test_starts_is_told_the_tests_directory(own_run_dir: Path) -> None:
    assert os.environ["OH_HYPERVISOR_RUN_DIR"] == str(own_run_dir)
    assert load_config(overrides={"state_dir": "state"}).run_path == own_run_dir


def test_default_run_directories_are_told_by_their_state_directory(tmp_path: Path) -> None:
    ours = tmp_path / "work" / "state"
    ours.mkdir(parents=True)
    tag = load_config(env={}, overrides={"state_dir": str(ours)}).run_path.name
    elsewhere = load_config(env={}, overrides={"state_dir": "/elsewhere/state"}).run_path.name
    assert run_entries_made_under(tmp_path, {tag, elsewhere, "0123456789"}) == {tag: ours}

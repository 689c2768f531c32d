"""`openhosting-admin standard add|list|remove` and `jobs list`, as an operator types them."""

import gzip
import os
import time
from pathlib import Path

import pytest

from openhosting.cli.admin import main
from openhosting.config import load_config
from openhosting.services.platform import open_platform
from openhosting.store import jobs as job_store
from openhosting.store.tables import PLATFORM_USER
from openhosting.wire.text import parse_properties, parse_properties_list


def admin(state: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--state-dir", str(state), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_standard_add_list_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    raw = os.urandom(10_000) + bytes(100_000)
    image = tmp_path / "disk.img.gz"
    image.write_bytes(gzip.compress(raw))
    iso = tmp_path / "cd.iso"
    iso.write_bytes(b"ISO" * 1000)

    code, out, _ = admin(state, capsys, "standard", "add", str(image), "--name", "Disk", "--gzip")
    assert code == 0
    disk = parse_properties(out)
    assert disk["format"] == "gzip" and disk["rawsize"] == str(len(raw))
    assert disk["media"] == "disk" and disk["claim:type"] == "shared"
    code, out, _ = admin(
        state, capsys, "standard", "add", str(iso), "--name", "A CD", "--media", "cdrom"
    )
    assert code == 0
    cdrom = parse_properties(out)

    code, out, _ = admin(state, capsys, "standard", "list")
    assert [item["drive"] for item in parse_properties_list(out)] == [
        disk["drive"],
        cdrom["drive"],
    ]
    code, out, err = admin(state, capsys, "standard", "add", str(iso), "--name", "x", "--gzip")
    assert code == 1 and "not a gzip image" in err
    code, out, _ = admin(state, capsys, "standard", "remove", disk["drive"])
    assert code == 0 and out == ""
    code, out, _ = admin(state, capsys, "standard", "list")
    assert [item["drive"] for item in parse_properties_list(out)] == [cdrom["drive"]]
    code, _, err = admin(state, capsys, "standard", "remove", disk["drive"])
    assert code == 1 and "could not be found" in err
    # The platform user that owns them is no user the operator manages.
    code, out, _ = admin(state, capsys, "user", "list")
    assert PLATFORM_USER not in out


def test_jobs_list_shows_state_progress_and_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    platform = open_platform(load_config(env={}, overrides={"state_dir": str(state)}))
    try:
        with platform.engine.begin() as connection:
            for dst, job_state, error in (
                ("a" * 36, "failed", "not gzip"),
                ("b" * 36, "queued", None),
            ):
                job_store.insert_job(
                    connection, user="u" * 36, dst=dst, src="s" * 36, conversion="gunzip",
                    state=job_state, error=error, created_at=time.time(),
                )  # fmt: skip
    finally:
        platform.close()
    code, out, _ = admin(state, capsys, "jobs", "list")
    assert code == 0
    newest, oldest = parse_properties_list(out)
    assert newest["state"] == "queued" and newest["drive"] == "b" * 36
    assert oldest["state"] == "failed" and oldest["error"] == "not gzip"
    assert oldest["conversion"] == "gunzip" and "created" in oldest
    code, out, _ = admin(state, capsys, "jobs", "list", "--state", "failed")
    assert [item["job"] for item in parse_properties_list(out)] == [oldest["job"]]

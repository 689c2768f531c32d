"""`openhosting-admin standard add|list|remove` and `jobs list`, as an operator types them."""

import gzip
import os
import time
from pathlib import Path

import pytest

from openhosting.admin.tool import main
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


def test_standard_add_of_a_missing_path_or_a_directory_says_which(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    assert admin(state, capsys, "init")[0] == 0
    missing = tmp_path / "debian.img.gz"
    code, out, err = admin(state, capsys, "standard", "add", str(missing), "--name", "x")
    assert (code, out) == (1, "")
    assert err == f"openhosting-admin: Cannot read {missing}: no such file\n"  # was "not a file"
    code, out, err = admin(state, capsys, "standard", "add", str(tmp_path), "--name", "x")
    assert err == f"openhosting-admin: Cannot read {tmp_path}: not a regular file\n"
    assert admin(state, capsys, "standard", "list")[1] == ""


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


def insert_jobs(state: Path, jobs: list[tuple[str, str, float | None]]) -> None:
    """Job rows of (dst, state, ended how many days ago)."""
    platform = open_platform(load_config(env={}, overrides={"state_dir": str(state)}))
    now = time.time()
    try:
        with platform.engine.begin() as connection:
            for dst, job_state, days_ago in jobs:
                ended = None if days_ago is None else now - days_ago * 86400
                job_store.insert_job(
                    connection, user="u" * 36, dst=dst, src="s" * 36, state=job_state,
                    created_at=now - 100 * 86400, ended_at=ended,
                )  # fmt: skip
    finally:
        platform.close()


def listed_drives(state: Path, capsys: pytest.CaptureFixture[str]) -> set[str]:
    code, out, _ = admin(state, capsys, "jobs", "list")
    assert code == 0
    return {item["drive"] for item in parse_properties_list(out)}


def test_jobs_prune_forgets_only_jobs_that_ended_before_the_age_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    insert_jobs(
        state,
        [("a" * 36, "done", 40), ("b" * 36, "failed", 20), ("c" * 36, "done", 1),
         ("d" * 36, "queued", None)],
    )  # fmt: skip
    code, out, _ = admin(state, capsys, "jobs", "prune", "--older-than", "10")
    assert code == 0 and out == "pruned 2\n"
    assert listed_drives(state, capsys) == {"c" * 36, "d" * 36}
    code, out, _ = admin(state, capsys, "jobs", "prune", "--older-than", "0")
    assert code == 0 and out == "pruned 1\n"
    assert listed_drives(state, capsys) == {"d" * 36}  # a pending job is never pruned
    for wrong in ("-1", "nan"):
        code, _, err = admin(state, capsys, "jobs", "prune", "--older-than", wrong)
        assert code == 1 and "0 or more days" in err


@pytest.mark.parametrize(("retention", "kept"), [(30, {"b" * 36}), (0, {"a" * 36, "b" * 36})])
async def test_the_daemon_applies_the_retention_when_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], retention: int, kept: set[str]
) -> None:
    state = tmp_path / "state"
    insert_jobs(state, [("a" * 36, "done", 31), ("b" * 36, "failed", 29)])
    config = load_config(
        env={"OH_STORAGE_JOB_RETENTION_DAYS": str(retention)},
        overrides={"state_dir": str(state)},
    )
    platform = open_platform(config)
    try:
        await platform.imaging.start()
        await platform.imaging.stop()
    finally:
        platform.close()
    assert listed_drives(state, capsys) == kept

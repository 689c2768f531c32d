"""What the transfer tools share (transfer.py): their -c and -p bounds."""

import os
import subprocess

import pytest

from tests.client.conftest import BIN


def without_ohuri() -> dict[str, str]:
    """This environment without an endpoint: a tool that got past its options stops there."""
    return {name: setting for name, setting in os.environ.items() if name not in ("OHURI", "EHURI")}


@pytest.mark.parametrize("tool", ["openhosting-upload", "openhosting-download"])
@pytest.mark.parametrize(
    ("option", "value", "said"),
    [("-c", "2G", "'2G' is more than 1G (each chunk in flight is held in memory)"),
     ("-c", "1073741825", "'1073741825' is more than 1G"),
     ("-p", "100000", "'100000' is more than 64"),
     ("-c", "0", "'0' is not above zero"), ("-p", "0", "'0' is not a whole number above zero")],
)  # fmt: skip
def test_chunk_sizes_and_parallel_chunks_out_of_bounds_are_usage_errors(
    tool: str, option: str, value: str, said: str
) -> None:
    # Before: -c 2G and -p 100000 were taken: chunks of 2 GiB each held in memory (4 at once,
    # twice for an upload's gzip), or 100000 threads and connections.
    args = (
        [option, value, "-d", "D", "image"]
        if tool == "openhosting-upload"
        else [option, value, "D", "f"]
    )
    env = without_ohuri()
    done = subprocess.run(
        [str(BIN / tool), *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert done.returncode == 2, done
    assert f"argument {option}: {said}" in done.stderr


def test_the_largest_chunk_and_the_most_parallel_chunks_are_taken() -> None:
    env = without_ohuri()
    done = subprocess.run(
        [str(BIN / "openhosting-download"), "-c", "1G", "-p", "64", "D", "f"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1 and done.stderr == "Please set OHURI=<API endpoint URI>\n"

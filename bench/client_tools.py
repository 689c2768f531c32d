"""The client tools against what the original shell tools did, in the same run.

Upload: `openhosting-upload` of a 1 GiB image, half zeros and half semi-compressible data,
against a loop doing what `elastichosts-upload` did: `head -c 5 MiB | gzip -c | curl` for one
chunk after another. Goal: ≥ 3×. Download: `openhosting-download` of that drive against the
original's loop of one `curl …/read/OFFSET/5MiB` per chunk. Goal: ≥ 2×. Both downloads are
checked byte for byte against the image.

`OH_BENCH_TOOLS_SIZE` (e.g. `128M`) makes a quicker trial; `OH_BENCH_TOOLS_CIPHER` picks the
drives' `encryption:cipher` (default `none`: the tools, not the daemon's AES, are measured).
"""

import hashlib
import os
import subprocess
import time
from pathlib import Path

from bench.drive_data import (
    BLOCK,
    ROUNDS,
    create_drive,
    data_blocks,
    destroy_drive,
    drop_dirty_pages,
    throughput,
)
from bench.harness import BIN, Daemon, report, running_daemon, work_directory
from openhosting.wire.sizes import parse_size

CHUNK = 5242880
TOOL_TIMEOUT = 1800

# What elastichosts-upload did, chunk by chunk, one process pipeline each.
UPLOAD_LOOP = r"""
set -o pipefail
FILE=$1 URL=$2 DRIVE=$3 SIZE=$4 CHUNK=$5 CONFIG=$6
for ((INDEX = 0; INDEX * CHUNK < SIZE; INDEX++)); do
  head -c $CHUNK | gzip -c \
    | curl --data-binary @- -K "$CONFIG" -f -s \
           -H 'Content-Type: application/octet-stream' -H 'Content-Encoding: gzip' \
           -H 'Expect:' "${URL}drives/$DRIVE/write/$((INDEX * CHUNK))" || exit 1
done < "$FILE"
"""

# What elastichosts-download did.
DOWNLOAD_LOOP = r"""
FILE=$1 URL=$2 DRIVE=$3 SIZE=$4 CHUNK=$5 CONFIG=$6
exec 3<>"$FILE"
OFFSET=0
while [ $OFFSET -lt $SIZE ]; do
  [ $SIZE -lt $((CHUNK + OFFSET)) ] && CHUNK=$((SIZE - OFFSET))
  curl -K "$CONFIG" -f -s "${URL}drives/$DRIVE/read/$OFFSET/$CHUNK" >&3 || exit 1
  OFFSET=$((OFFSET + CHUNK))
done
"""


def bench_size() -> int:
    size = parse_size(os.environ.get("OH_BENCH_TOOLS_SIZE", "1G"), "OH_BENCH_TOOLS_SIZE")
    return max(2 * BLOCK, size - size % (2 * BLOCK))


def make_image(path: Path, size: int) -> str:
    """Alternate 16 MiB of data (4-bit values: gzip roughly halves them) and 16 MiB of zeros
    (left as holes); returns the image's sha256."""
    digest = hashlib.sha256()
    zeros = bytes(BLOCK)
    with path.open("wb") as file:
        for block in data_blocks(size // 2):
            file.write(block)
            file.seek(BLOCK, os.SEEK_CUR)
            digest.update(block)
            digest.update(zeros)
        file.truncate()
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Run `command` to its end: seconds taken and its standard output."""
    started = time.perf_counter()
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=True
    )
    return time.perf_counter() - started, done.stdout


def shell_loop(
    script: str,
    file: Path,
    daemon: Daemon,
    drive: str,
    size: int,
    env: dict[str, str],
    config: Path,
) -> float:
    """Seconds the original tool's loop takes for `drive` and `file`."""
    url = daemon.url + "/"
    args = [str(file), url, drive, str(size), str(CHUNK), str(config)]
    return timed(["bash", "-c", script, "loop", *args], env)[0]


def check_and_remove(path: Path, expected: str) -> None:
    if sha256_of(path) != expected:
        raise RuntimeError(f"{path.name} differs from the image")
    path.unlink()


def run() -> float:
    size = bench_size()
    cipher = os.environ.get("OH_BENCH_TOOLS_CIPHER", "none")
    upload, download = [str(BIN / "openhosting-upload")], [str(BIN / "openhosting-download")]
    ours_up, anchor_up, ours_down, anchor_down = [], [], [], []
    with work_directory("client-tools") as work_dir, running_daemon(work_dir) as daemon:
        image = work_dir / "image.raw"
        expected = make_image(image, size)
        config = work_dir / "curl.conf"  # the credentials, kept off the command line
        config.write_text(f'user = "{daemon.auth}"\n')
        config.chmod(0o600)
        env = {**os.environ, "OHURI": daemon.url + "/", "OHAUTH": daemon.auth}
        for index in range(ROUNDS):
            drop_dirty_pages()
            drive = create_drive(daemon, size, cipher)
            anchor_up.append(shell_loop(UPLOAD_LOOP, image, daemon, drive, size, env, config))
            destroy_drive(daemon, drive)
            drop_dirty_pages()
            seconds, out = timed([*upload, "-e", cipher, str(image)], env)
            ours_up.append(seconds)
            drive = out.split()[2]  # "Created drive UUID of size N"
            # Whichever writes its 1 GiB first pays for fresh page-cache memory (first touch
            # in a VM costs a host fault per page): alternate who goes first.
            order = ("anchor", "ours") if index % 2 == 0 else ("ours", "anchor")
            for side in order:
                drop_dirty_pages()
                target = work_dir / f"{side}.raw"
                if side == "anchor":
                    anchor_down.append(
                        shell_loop(DOWNLOAD_LOOP, target, daemon, drive, size, env, config)
                    )
                else:
                    ours_down.append(timed([*download, drive, str(target)], env)[0])
                check_and_remove(target, expected)
            destroy_drive(daemon, drive)
    upload_ratio = report(
        f"openhosting-upload, {size >> 20} MiB half zeros, cipher {cipher}",
        throughput(size, min(ours_up)), "sequential head|gzip|curl per 5 MiB chunk",
        throughput(size, min(anchor_up)), "MB/s", "≥ 3",
    )  # fmt: skip
    report(
        f"openhosting-download, {size >> 20} MiB half zeros, cipher {cipher}",
        throughput(size, min(ours_down)), "sequential curl per 5 MiB chunk",
        throughput(size, min(anchor_down)), "MB/s", "≥ 2",
    )  # fmt: skip
    return upload_ratio

"""`--verify` of `openhosting-upload` and `openhosting-download` against a real daemon: every
chunk's SHA-256 is compared with the drive's (`/drives/D/hash/OFFSET/SIZE`); a chunk damaged
on its way or on the drive is sent or fetched again, and one damaged every time fails the
tool with the chunk named and the command that resumes it.

The damage comes from a fault hook in the test (the tools run in-process, their HTTP client
patched): a byte flipped in a chunk's gzip body or in a fetched chunk, or garbage written into
the drive just before the tool asks for a chunk's hash."""

import gzip
import os
import re
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from openhosting.client import download, upload
from openhosting.client.http_client import ApiClient
from openhosting.client.tool import run_tool
from openhosting.client.verify import VERIFY_RETRIES
from tests.client.conftest import ApiDaemon, sha256_of
from tests.client.test_upload import created_drive, make_image

CHUNK = 65536


@pytest.fixture
def tools_env(api: ApiDaemon, monkeypatch: pytest.MonkeyPatch) -> ApiDaemon:
    """The in-process tools' environment: OHURI and OHAUTH of the test daemon."""
    monkeypatch.setenv("OHURI", api.url)
    monkeypatch.setenv("OHAUTH", f"{api.user}:{api.secret}")
    return api


def run_upload(*argv: str) -> int:
    return run_tool(lambda: upload.upload(upload.build_parser().parse_args(list(argv))))


def run_download(*argv: str) -> int:
    return run_tool(lambda: download.download(download.build_parser().parse_args(list(argv))))


def flipped(data: bytes) -> bytes:
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0x40
    return bytes(damaged)


class Faults:
    """Counts of the faults still to inject, per chunk offset; thread-safe (the tools' workers
    share it). `times=None` injects forever."""

    def __init__(self, **by_offset: int | None) -> None:
        self._left = {int(key.removeprefix("at")): times for key, times in by_offset.items()}
        self.injected: list[int] = []
        self._lock = threading.Lock()

    def take(self, offset: int) -> bool:
        with self._lock:
            if offset not in self._left or self._left[offset] == 0:
                return False
            left = self._left[offset]
            self._left[offset] = None if left is None else left - 1
            self.injected.append(offset)
            return True


def damage_write_bodies(monkeypatch: pytest.MonkeyPatch, faults: Faults) -> None:
    """Flip a byte of the chunk inside a write's gzip body (damage on the way)."""
    original = ApiClient.request

    def request(self: ApiClient, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        match = re.search(r"/write/([0-9]+)$", path)
        if match and isinstance(body, bytes) and faults.take(int(match.group(1))):
            body = gzip.compress(flipped(gzip.decompress(body)))
        return original(self, method, path, body, **kw)

    monkeypatch.setattr(ApiClient, "request", request)


def damage_drive_before_hash(
    monkeypatch: pytest.MonkeyPatch, faults: Faults, api: ApiDaemon, drive: Callable[[], str]
) -> None:
    """Write garbage into a chunk's range of the drive just before its hash is asked for
    (damage on the drive, between the write and the verify)."""
    original = ApiClient.call

    def call(self: ApiClient, method: str, path: str, body: Any = None, **kw: Any) -> bytes:
        match = re.search(r"/hash/([0-9]+)/([0-9]+)$", path)
        if match and faults.take(int(match.group(1))):
            garbage = os.urandom(16)
            write = urllib.request.Request(
                f"{api.url}drives/{drive()}/write/{int(match.group(1)) + 100}",
                data=garbage,
                headers={"Authorization": self._authorization},  # the tool's own credentials
            )
            with urllib.request.urlopen(write, timeout=30) as answer:
                assert answer.status == 204
        return original(self, method, path, body, **kw)

    monkeypatch.setattr(ApiClient, "call", call)


def damage_fetched_chunks(monkeypatch: pytest.MonkeyPatch, faults: Faults) -> None:
    """Flip a byte of a fetched chunk as it arrives (damage on the way back)."""
    original = download.fetch_chunk

    def fetch(client: ApiClient, drive: str, buffers: Any, chunk: Any) -> Any:
        data = original(client, drive, buffers, chunk)
        if faults.take(chunk.offset):
            data[len(data) // 2] ^= 0x40  # in the worker's buffer, as a bad read would
        return data

    monkeypatch.setattr(download, "fetch_chunk", fetch)


@pytest.fixture
def image(tmp_path: Path) -> Iterator[Path]:
    data = os.urandom(4 * CHUNK)
    # Chunks 0-3 data, 4-5 zeros (skipped on a new drive), 6 data, a short last chunk.
    yield make_image(tmp_path / "image", data, 2 * CHUNK, data[:CHUNK], data[:999])


@pytest.mark.parametrize("cipher", ["none", "aes-xts-plain"])
def test_verified_round_trip_prints_the_usual_transcript(
    api: ApiDaemon, tmp_path: Path, image: Path, cipher: str
) -> None:
    done = api.run("openhosting-upload", "--verify", "-c", str(CHUNK), "-e", cipher, image)
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    assert done.stdout.decode().endswith(
        f"Uploading 8 chunks of {CHUNK} bytes: ........ completed\n"
    )
    drive = created_drive(done.stdout.decode())
    back = tmp_path / "back"
    fetched = api.run("openhosting-download", "--verify", "-c", str(CHUNK), drive, back)
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stderr == b""
    assert sha256_of(back) == sha256_of(image)


def test_upload_sends_again_a_chunk_damaged_on_its_way_or_on_the_drive(
    tools_env: ApiDaemon,
    image: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    made: list[str] = []
    original_create = upload.create_drive
    monkeypatch.setattr(
        upload, "create_drive", lambda *args: made.append(original_create(*args)) or made[0]
    )
    on_the_way = Faults(**{f"at{CHUNK}": 1})
    on_the_drive = Faults(**{f"at{2 * CHUNK}": 1, f"at{4 * CHUNK}": 1})  # data; skipped zeros
    damage_write_bodies(monkeypatch, on_the_way)
    damage_drive_before_hash(monkeypatch, on_the_drive, tools_env, lambda: made[0])
    status = run_upload("--verify", "-c", str(CHUNK), "-e", "none", str(image))
    out, err = capsys.readouterr()
    assert status == 0, err
    assert on_the_way.injected == [CHUNK]
    assert sorted(on_the_drive.injected) == [2 * CHUNK, 4 * CHUNK]
    for index in (2, 3, 5):
        assert (
            f"Chunk {index} at offset {(index - 1) * CHUNK}: its hash differs from the drive's,"
            f" sending it again (1 of {VERIFY_RETRIES})"
        ) in err
    assert out.endswith(f"Uploading 8 chunks of {CHUNK} bytes: ........ completed\n")
    drive = created_drive(out)
    # 6 data chunks, 3 chunks again (one of zeros: the drive held garbage there), and the
    # test's 2 writes of garbage.
    assert tools_env.info(drive)["write:requests"] == "11"
    tools_env.check("openhosting-download", "-c", str(CHUNK), drive, tmp_path / "back")
    assert sha256_of(tmp_path / "back") == sha256_of(image)


def test_upload_fails_on_a_chunk_damaged_every_time_and_says_how_to_resume(
    tools_env: ApiDaemon,
    image: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    faults = Faults(**{f"at{3 * CHUNK}": None})
    damage_write_bodies(monkeypatch, faults)
    status = run_upload("--verify", "-p", "1", "-c", str(CHUNK), "-e", "none", str(image))
    out, err = capsys.readouterr()
    assert status == 1
    assert out.endswith(f"Uploading 8 chunks of {CHUNK} bytes: ...E\n")
    assert len(faults.injected) == 1 + VERIFY_RETRIES
    drive = created_drive(out)
    assert f"Failed to write chunk 4 of 8: aborting\nChunk 4 at offset {3 * CHUNK}" in err
    assert f"still differs after {VERIFY_RETRIES} retries: sha256 " in err
    assert f"Restart with '-d {drive} -o {3 * CHUNK}' to resume the upload" in err


def test_download_fetches_again_a_chunk_damaged_on_its_way(
    tools_env: ApiDaemon,
    image: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tools_env.check("openhosting-upload", "-c", str(CHUNK), "-e", "none", image)
    drive = created_drive(out)
    faults = Faults(**{f"at{CHUNK}": 2, f"at{7 * CHUNK}": 1})  # twice; the short last chunk
    damage_fetched_chunks(monkeypatch, faults)
    back = tmp_path / "back"
    status = run_download("--verify", "-c", str(CHUNK), drive, str(back))
    out, err = capsys.readouterr()
    assert status == 0, err
    assert len(faults.injected) == 3
    assert (
        f"Chunk 2 at offset {CHUNK}: its hash differs from the drive's, fetching it again (2 of"
        in err
    )
    assert sha256_of(back) == sha256_of(image)


def test_download_fails_on_a_chunk_damaged_every_time_and_says_how_to_resume(
    tools_env: ApiDaemon,
    image: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    drive = created_drive(
        tools_env.check("openhosting-upload", "-e", "none", "-c", str(CHUNK), image)
    )
    damage_fetched_chunks(monkeypatch, Faults(**{f"at{2 * CHUNK}": None}))
    back = tmp_path / "back"
    status = run_download("--verify", "-p", "1", "-c", str(CHUNK), drive, str(back))
    _, err = capsys.readouterr()
    assert status == 1
    assert f"Failed to read chunk at offset {2 * CHUNK}: aborting\n" in err
    assert f"still differs after {VERIFY_RETRIES} retries" in err
    assert f"Restart with '-o {2 * CHUNK}' to resume the download" in err
    assert back.stat().st_size == 2 * CHUNK  # the chunks before it, never the damaged one

"""`openhosting`: one API call from the command line, as the seed's transcript uses it."""

import http.server
import json
import os
import re
import subprocess
import threading
from pathlib import Path

import pytest

from testbed.daemon_process import free_port
from tests.client.conftest import BIN, ApiDaemon, run_in_terminal

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def shell(api: ApiDaemon, script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=api.env(), cwd=cwd,
        timeout=60, check=False,
    )  # fmt: skip


def test_seed_create_with_a_here_document_piped_to_grep_prints_the_drive_line(
    api: ApiDaemon, tmp_path: Path
) -> None:
    done = shell(
        api,
        "openhosting -c drives create << EOF | grep drive\nname TestDrive\nsize 10000000\nEOF\n",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(f"drive {UUID}\n", done.stdout)
    drive = done.stdout.split()[1]
    info = api.info(drive)
    assert info["name"] == "TestDrive" and info["size"] == "10000000"


def test_seed_write_of_a_file_stores_the_image(api: ApiDaemon, tmp_path: Path) -> None:
    image = tmp_path / "image.raw"
    image.write_bytes(os.urandom(300_000) + bytes(200_000) + os.urandom(12_345))
    drive = api.create_drive(image.stat().st_size)
    done = shell(api, f"openhosting -f image.raw drives {drive} write", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""
    assert api.run("openhosting", "drives", drive, "read").stdout == image.read_bytes()


def test_the_arguments_joined_with_slashes_are_the_path(api: ApiDaemon) -> None:
    drive = api.create_drive(1000, cipher="none")
    api.check("openhosting", "-c", "drives", drive, "write", "10", input=b"0123456789")
    assert api.run("openhosting", "drives", drive, "read", "13", "4").stdout == b"3456"


def test_a_piped_body_of_unknown_length_is_written_whole(api: ApiDaemon, tmp_path: Path) -> None:
    data = os.urandom(2_500_000)
    (tmp_path / "data").write_bytes(data)
    drive = api.create_drive(len(data))
    done = shell(api, f"cat data | openhosting -c drives {drive} write", tmp_path)
    assert done.returncode == 0, done.stderr
    assert api.run("openhosting", "drives", drive, "read").stdout == data


def test_json_mode_sends_and_receives_json(api: ApiDaemon) -> None:
    body = json.dumps({"name": "j", "size": "1M", "encryption:cipher": "none"}).encode()
    out = api.check("openhosting", "-j", "-c", "drives", "create", input=body)
    document = json.loads(out)
    assert document["size"] == 1048576 and document["name"] == "j"
    listed = json.loads(api.check("openhosting", "-j", "drives", "list"))
    assert {"drive": document["drive"]} in listed


def test_an_http_error_prints_its_text_on_stderr_and_exits_non_zero(api: ApiDaemon) -> None:
    done = api.run("openhosting", "drives", "nosuch", "info")
    assert done.returncode != 0
    assert done.stdout == b""
    assert done.stderr.decode().strip() == "Command /drives/nosuch/info could not be found"


@pytest.mark.parametrize(
    ("name", "reason"), [("missing", " not found"), ("dir", ": Is a directory")]
)
def test_a_body_file_that_cannot_be_read_is_named_without_a_traceback(
    api: ApiDaemon, tmp_path: Path, name: str, reason: str
) -> None:
    drive = api.create_drive(1000, cipher="none")
    api.check("openhosting", "-c", "drives", drive, "write", input=b"kept")
    (tmp_path / "dir").mkdir()
    path = tmp_path / name
    done = api.run("openhosting", "-f", path, "drives", drive, "write")
    assert done.returncode == 1
    assert done.stderr.decode() == f"{path}{reason}\n"  # one line, no traceback
    assert done.stdout == b""
    assert api.run("openhosting", "drives", drive, "read", "0", "4").stdout == b"kept"


@pytest.mark.parametrize("option", ["-h", "--help"])
def test_help_prints_every_option_on_stdout_and_succeeds(api: ApiDaemon, option: str) -> None:
    done = api.run("openhosting", option, env={**api.env(), "OHURI": "", "OHAUTH": ""})
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    usage = done.stdout.decode()
    assert usage.startswith("Usage: openhosting ")
    for documented in ("-c ", "-f FILENAME", "-j ", "-v ", "OHURI", "OHAUTH"):
        assert documented in usage


def test_an_unknown_option_prints_the_usage_on_stderr_and_exits_2(api: ApiDaemon) -> None:
    done = api.run("openhosting", "--nosuch", "drives", "list")
    assert done.returncode == 2
    assert done.stdout == b""
    assert "option --nosuch not recognized" in done.stderr.decode()
    assert "Usage: openhosting " in done.stderr.decode()


def test_too_large_a_write_fails_with_the_servers_reason(api: ApiDaemon) -> None:
    drive = api.create_drive(10)
    done = api.run("openhosting", "-c", "drives", drive, "write", input=b"x" * 11)
    assert done.returncode != 0
    assert "drive's end" in done.stderr.decode()


def test_verbose_shows_both_headers_on_stderr_without_the_secret(api: ApiDaemon) -> None:
    done = api.run("openhosting", "-v", "drives", "list")
    assert done.returncode == 0
    err = done.stderr.decode()
    assert "> POST /drives/list HTTP/1.1" in err
    assert "< HTTP/1.1 200 OK" in err and "< X-Elastic-Output: list" in err
    assert api.secret not in err
    assert "> " not in done.stdout.decode()


@pytest.mark.parametrize("suffix", ["/", ""])
def test_ohuri_works_with_or_without_the_trailing_slash(api: ApiDaemon, suffix: str) -> None:
    env = api.env(OHURI=api.url.rstrip("/") + suffix)
    done = api.run("openhosting", "drives", "list", env=env)
    assert done.returncode == 0, done.stderr


def test_a_wrong_secret_says_to_check_ohauth(api: ApiDaemon) -> None:
    done = api.run("openhosting", "drives", "list", env=api.env(OHAUTH=f"{api.user}:wrong"))
    assert done.returncode != 0
    assert "Authentication failed" in done.stderr.decode()
    assert "OHAUTH" in done.stderr.decode()


def test_a_refused_connection_and_a_malformed_ohuri_are_explained(api: ApiDaemon) -> None:
    closed = f"http://127.0.0.1:{free_port()}/"
    refused = api.run("openhosting", "drives", "list", env=api.env(OHURI=closed))
    assert refused.returncode != 0
    assert f"Cannot connect to {closed}: connection refused" in refused.stderr.decode()
    malformed = api.run("openhosting", "drives", "list", env=api.env(OHURI="127.0.0.1:8080"))
    assert malformed.returncode != 0
    assert "Invalid OHURI" in malformed.stderr.decode()
    unset = api.run("openhosting", "drives", "list", env={**api.env(), "OHURI": ""})
    assert "Please set OHURI" in unset.stderr.decode()


@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan", "1e309"])
@pytest.mark.parametrize("tool", ["openhosting", "openhosting-upload", "openhosting-download"])
def test_a_bad_oh_timeout_is_named_in_one_line(
    api: ApiDaemon, tmp_path: Path, tool: str, value: str
) -> None:
    # Each was a traceback (ValueError, OverflowError), or for 0 "Operation now in progress".
    image = tmp_path / "image"
    image.write_bytes(b"x" * 100)
    args = {
        "openhosting": ["drives", "list"],
        "openhosting-upload": [image],
        "openhosting-download": ["00000000-0000-4000-8000-000000000000", image],
    }[tool]
    done = api.run(tool, *args, env=api.env(OH_TIMEOUT=value))
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.decode() == (
        f"Invalid OH_TIMEOUT {value!r}: expected seconds above 0, at most 86400 (default 300)\n"
    )


def test_a_fractional_oh_timeout_works(api: ApiDaemon) -> None:
    done = api.run("openhosting", "drives", "list", env=api.env(OH_TIMEOUT="2.5"))
    assert done.returncode == 0, done.stderr


class _NotTheApi(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.send_response(404)
        self.send_header("Content-Length", "9")
        self.end_headers()
        self.wfile.write(b"Not here\n")

    def log_message(self, *args: object) -> None:
        pass


def test_an_ohuri_naming_another_web_server_is_explained(api: ApiDaemon) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotTheApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        other = f"http://127.0.0.1:{server.server_address[1]}/"
        done = api.run("openhosting", "drives", "list", env=api.env(OHURI=other))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert done.returncode != 0
    assert "HTTP 404 Not Found" in done.stderr.decode()
    assert "is OHURI the API endpoint?" in done.stderr.decode()


def test_a_missing_secret_is_asked_for_without_echo(api: ApiDaemon) -> None:
    env = api.env(OHAUTH=api.user)
    status, shown = run_in_terminal(
        [str(BIN / "openhosting"), "drives", "list"], env, answer=api.secret.encode() + b"\n"
    )
    assert status == 0, shown
    assert b"secret API key" in shown
    assert api.secret.encode() not in shown  # not echoed


def test_a_missing_secret_without_a_terminal_is_an_error_not_a_read_of_stdin(
    api: ApiDaemon,
) -> None:
    done = subprocess.run(
        [str(BIN / "openhosting"), "-c", "drives", "create"],
        input=b"size 1k\n", capture_output=True, env=api.env(OHAUTH=api.user),
        timeout=60, check=False, start_new_session=True,  # no controlling terminal
    )  # fmt: skip
    assert done.returncode != 0
    assert "no terminal" in done.stderr.decode()


def test_seed_servers_create_prints_the_server_info(api: ApiDaemon, tmp_path: Path) -> None:
    drive = api.create_drive(10_000_000)
    done = shell(
        api,
        "openhosting -c servers create << EOF\nname TestServer\ncpu 2000\nmem 1024\n"
        f"ide:0:0 {drive}\nboot ide:0:0\nnic:0:model e1000\nnic:0:dhcp auto\nvnc:ip auto\n"
        "vnc:password XXXXXXXX\nEOF\n",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    info = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert re.fullmatch(UUID, info["server"])
    assert info["name"] == "TestServer" and info["cpu"] == "2000" and info["mem"] == "1024"
    assert info["smp"] == "1" and info["ide:0:0"] == drive and info["boot"] == "ide:0:0"
    assert info["nic:0:model"] == "e1000" and info["vnc:password"] == "XXXXXXXX"
    # User-mode networking (the default): the guest's own address is QEMU's private one,
    # and VNC listens on the host's loopback.
    assert info["nic:0:dhcp"] == info["nic:0:dhcp:ip"] == "10.0.2.15"
    assert info["vnc:ip"] == "127.0.0.1"
    assert info["rx"] == "0" and info["tx"] == "0"
    shell(api, f"openhosting servers {info['server']} destroy", tmp_path)

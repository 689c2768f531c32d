"""The web console in a real headless Chromium (Debian's), against a real daemon: over
HTTPS the page opens its WebSocket with wss (Chromium refuses ws from an HTTPS page) and draws
the screen (that server boots nothing, QEMU's VNC shows SeaBIOS finding no disk); the page
says in words when it has no token or noVNC is missing. The console of a booted guest opened
from the dashboard, its screen, keys reaching the guest, its end when the server stops and a
used token's page are the journey's (tests/browser/test_journey.py).
"""

import shutil
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from testbed.chromium import CHROMEDRIVER, chromium_options
from testbed.console_guest import (
    VNC_PASSWORD,
    wait_for_screen,
    wait_for_state,
)
from testbed.daemon_process import DaemonProcess, create_user, running_daemon
from testbed.leftovers import vm_run_directory
from tests.security.test_https import self_signed

pytestmark = pytest.mark.integration


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A short directory for the VMs' run files (unix socket paths), every VM killed after
    the test."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("QEMU is not installed (Debian package qemu-system-x86)")
    with vm_run_directory("ohc-") as path:
        yield path


def test_over_https_the_page_opens_its_websocket_with_wss(tmp_path: Path, run_dir: Path) -> None:
    cert, key = self_signed(tmp_path)
    env = {"OH_API_TLS_CERT": str(cert), "OH_API_TLS_KEY": str(key),
           "OH_HYPERVISOR_RUN_DIR": str(run_dir)}  # fmt: skip
    account = create_user(tmp_path / "state")
    daemon = DaemonProcess(tmp_path / "state", tmp_path / "daemon.log", env=env)
    profile = tmp_path / "chromium"
    options = chromium_options(profile)
    options.add_argument("--ignore-certificate-errors")  # our self-signed certificate
    browser = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        trust.check_hostname = False  # the certificate names 127.0.0.1 in its CN only

        def post(path: str, body: str = "") -> dict[str, str]:
            request = urllib.request.Request(
                f"https://127.0.0.1:{daemon.port}{path}", data=body.encode(),
                headers={"Authorization": account.auth_header},
            )  # fmt: skip
            with urllib.request.urlopen(request, timeout=30, context=trust) as answer:
                return dict(line.split(" ", 1) for line in answer.read().decode().splitlines())

        body = f"name tls\ncpu 1000\nmem 64\npersistent true\nvnc:password {VNC_PASSWORD}"
        server = post("/servers/create", body)["server"]
        url = post(f"/servers/{server}/console")["url"]
        assert url.startswith(f"https://127.0.0.1:{daemon.port}/console/?token=")
        browser.get(url)
        assert "Connected" in wait_for_state(browser, "connected")
        wait_for_screen(browser)
        post(f"/servers/{server}/stop")
    finally:
        browser.quit()
        daemon.stop()


def test_the_page_says_in_words_when_it_has_no_token_or_novnc_is_missing(
    tmp_path: Path, browser: WebDriver
) -> None:
    """Never a blank page: no daemon work is needed to see these (no server, no token)."""
    empty = tmp_path / "no-novnc"
    empty.mkdir()
    env = {"OH_API_CONSOLE_NOVNC_DIR": str(empty)}
    with running_daemon(tmp_path, env=env) as running:
        browser.get(f"{running.url}/console/")
        assert "holds no console token" in wait_for_state(browser, "error")
        browser.get(f"{running.url}/console/?token=anything")
        words = wait_for_state(browser, "error")
        assert "noVNC could not be loaded" in words and "novnc" in words, words

"""The web console in a real headless Chromium (Debian's), against a real daemon whose
server boots the tiny guest under TCG: `POST /servers/S/console`, the page at its `url`
draws the guest's screen with noVNC, keys typed there reach the guest, the session ends in
words when the server stops, and a used token's page says so. One guest, about half a minute.
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver import ActionChains, Keys
from selenium.webdriver.remote.webdriver import WebDriver

from tests.browser.console_guest import (
    KEYS_PREFIX,
    read_keyboard_to_serial,
    start_console_server,
    wait_for_screen,
    wait_for_serial,
    wait_for_state,
)
from tests.conftest import kill_leftover_vms
from tests.daemon_process import Api, Daemon, running_daemon
from tests.guest.build_guest import build_tiny_guest

pytestmark = pytest.mark.integration

MARKER = "ohkeys42"  # letters and digits: the same keys on every keyboard layout


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Daemon, Path]]:
    """A daemon with its VMs' run files in a short directory (unix socket paths), every VM
    killed after the test."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("QEMU is not installed (Debian package qemu-system-x86)")
    run_dir = Path(tempfile.mkdtemp(prefix="ohc-", dir="/tmp"))
    run_dir.chmod(0o755)  # QEMU may run as another user
    try:
        with running_daemon(tmp_path, env={"OH_HYPERVISOR_RUN_DIR": str(run_dir)}) as running:
            yield running, run_dir
    finally:
        kill_leftover_vms(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)


def test_the_console_page_shows_the_guests_screen_takes_keys_and_says_when_it_ends(
    daemon: tuple[Daemon, Path], browser: WebDriver, tmp_path: Path
) -> None:
    running, run_dir = daemon
    api = Api(running, running.url)
    server = start_console_server(api, build_tiny_guest())
    read_keyboard_to_serial(run_dir / server)

    ticket = api.properties(f"/servers/{server}/console", b"")
    browser.get(ticket["url"])
    assert "Connected" in wait_for_state(browser, "connected")
    assert "token" not in browser.current_url  # kept out of the history
    wait_for_screen(browser)

    canvas = browser.find_element("css selector", "#screen canvas")
    ActionChains(browser).click(canvas).send_keys(MARKER + Keys.ENTER).perform()
    wait_for_serial(run_dir / server / "serial.log", KEYS_PREFIX + MARKER, timeout=30)
    screenshot = tmp_path / "console.png"  # the typed line is on the screen too
    assert browser.save_screenshot(str(screenshot))
    if target := os.environ.get("OH_CONSOLE_SCREENSHOT"):  # docs/images/console.png
        shutil.copyfile(screenshot, target)

    status, _, answer = api.call(f"/servers/{server}/stop", b"")
    assert status == 204, answer
    assert "session ended" in wait_for_state(browser, "ended")

    browser.get(ticket["url"])  # the same token, once more
    words = wait_for_state(browser, "error")
    assert "Console token used" in words, words

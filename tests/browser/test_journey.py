"""A customer's whole journey through the dashboard, in one real headless Chromium against a
real daemon whose server boots the tiny guest under TCG (one guest, about a minute):

sign in and see the (empty) server list; create a server from a standard drive (made with
the admin tool beforehand) and watch it go active without a reload; open its console from
the dashboard and see the guest's screen; type a marker there that reaches the guest (its
serial log); stop it from the dashboard, the console saying its session ended, and its used
token's page saying so; see it start again on the page when an API client starts it (the
event feed); then a second user, signed in, sees none of it and opens nothing
with the first user's tokens, stolen: neither one the dashboard asked for (bound to the
first user's session) nor one an API client asked for (a bearer token, but not for another
user's browser).
"""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver import ActionChains, Keys
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from testbed.build_guest import build_tiny_guest
from testbed.console_guest import (
    KEYS_PREFIX,
    VNC_PASSWORD,
    read_keyboard_to_serial,
    wait_for_screen,
    wait_for_serial,
    wait_for_state,
)
from testbed.daemon_process import Api, Daemon, create_user, running_daemon
from testbed.leftovers import vm_run_directory
from tests.browser.dashboard_helpers import (
    add_standard_image,
    click,
    error_text,
    server_row,
    server_status,
    signed_in,
    visible,
    wait_for,
)

pytestmark = pytest.mark.integration

MARKER = "ohjourney7"  # letters and digits: the same keys on every keyboard layout
BOOT_SECONDS = 90.0  # TCG on a machine shared with other tests
# Records the URL the dashboard opens its console at (the console page then takes the token
# out of its own address bar), and opens it, or with `false` only records it.
RECORD_OPENED = """
const really = arguments[0];
const open = window.open.bind(window);
window.opened = [];
window.open = (...args) => { window.opened.push(args[0]); return really ? open(...args) : null; };
"""


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Daemon, Path]]:
    """A daemon whose VMs' run files are in a short directory (unix socket paths), every VM
    killed after the test."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("QEMU is not installed (Debian package qemu-system-x86)")
    with (
        vm_run_directory("ohj-") as run_dir,
        running_daemon(tmp_path, env={"OH_HYPERVISOR_RUN_DIR": str(run_dir)}) as running,
    ):
        yield running, run_dir


def create_from_standard_image(browser: WebDriver, image: str) -> str:
    """Fill the dashboard's New server form with `image` and a VNC password, started at once;
    the new server's UUID once its row shows."""
    browser.find_element(By.LINK_TEXT, "New server").click()
    wait_for(browser, lambda b: visible(b, "create-section"))
    option = wait_for(
        browser,
        lambda b: next(
            (o for o in b.find_elements(By.CSS_SELECTOR, "#create-image option")
             if o.text.startswith(image)), None,
        ),
    )  # fmt: skip
    option.click()
    browser.find_element(By.ID, "create-name").send_keys("journey")
    browser.find_element(By.ID, "create-vnc").send_keys(VNC_PASSWORD)
    assert browser.find_element(By.ID, "create-start").is_selected()
    browser.find_element(By.CSS_SELECTOR, "#create button[type=submit]").click()
    wait_for(browser, lambda b: b.current_url.endswith("#servers"), 60)
    row = "//table[@id='servers']//tr[th='journey']"
    return str(
        wait_for(browser, lambda b: b.find_element(By.XPATH, row).get_attribute("data-server"))
    )


def opened_console(browser: WebDriver, server: str, really: bool) -> str:
    """Click the server's Console button; the console URL the dashboard opened (in a new tab
    when `really`, else only asked for)."""
    browser.execute_script(RECORD_OPENED, really)
    click(browser, lambda b: server_row(b, server), "console")
    opened = wait_for(browser, lambda b: b.execute_script("return window.opened"))
    assert len(opened) == 1
    return str(opened[0])


def test_sign_in_create_watch_it_run_use_its_console_stop_it_and_another_user_sees_none(
    daemon: tuple[Daemon, Path], browser: WebDriver, tmp_path: Path
) -> None:
    running, run_dir = daemon
    add_standard_image(running, "Tiny", build_tiny_guest().read_bytes())
    signed_in(browser, running.url, running)
    wait_for(browser, lambda b: visible(b, "servers-empty"))
    browser.execute_script("window.notReloaded = true")

    server = create_from_standard_image(browser, "Tiny")
    wait_for(browser, lambda b: server_status(b, server) == "active", BOOT_SECONDS)
    assert browser.execute_script("return window.notReloaded") is True
    read_keyboard_to_serial(run_dir / server)

    # The console, from the dashboard, in a new tab of the same browser (its session cookie
    # goes along on the WebSocket: the dashboard's token is bound to that session).
    dashboard = browser.current_window_handle
    url = opened_console(browser, server, really=True)
    assert url.startswith(f"{running.url}/console/?token=")
    wait_for(browser, lambda b: len(b.window_handles) == 2)
    console = next(handle for handle in browser.window_handles if handle != dashboard)
    browser.switch_to.window(console)
    assert "Connected" in wait_for_state(browser, "connected")
    assert "token" not in browser.current_url  # kept out of the history
    wait_for_screen(browser)
    canvas = browser.find_element(By.CSS_SELECTOR, "#screen canvas")
    ActionChains(browser).click(canvas).send_keys(MARKER + Keys.ENTER).perform()
    wait_for_serial(run_dir / server / "serial.log", KEYS_PREFIX + MARKER, timeout=30)
    screenshot = tmp_path / "console.png"  # the typed line is on the screen too
    assert browser.save_screenshot(str(screenshot))
    if target := os.environ.get("OH_CONSOLE_SCREENSHOT"):  # docs/images/console.png
        shutil.copyfile(screenshot, target)

    # Tokens a thief could get hold of while the server runs: one the dashboard asks for,
    # one an API client asks for.
    browser.switch_to.window(dashboard)
    stolen_from_dashboard = opened_console(browser, server, really=False)
    stolen_bearer = Api(running, running.url).properties(f"/servers/{server}/console", b"")["url"]

    click(browser, lambda b: server_row(b, server), "stop")
    wait_for(browser, lambda b: server_status(b, server) == "stopped", 30)
    assert error_text(browser) == ""
    browser.switch_to.window(console)
    assert "session ended" in wait_for_state(browser, "ended")
    browser.get(url)  # the same token, once more
    assert "Console token used" in wait_for_state(browser, "error")
    browser.close()
    browser.switch_to.window(dashboard)
    # A change made elsewhere (another client of the API) shows too: the event feed.
    assert Api(running, running.url).call(f"/servers/{server}/start", b"").status in (200, 204)
    wait_for(browser, lambda b: server_status(b, server) == "active", BOOT_SECONDS)
    assert browser.execute_script("return window.notReloaded") is True

    # A second user, in a browser without the first one's cookie.
    browser.delete_all_cookies()
    other = create_user(running.state_dir)
    signed_in(browser, running.url, other)
    wait_for(browser, lambda b: visible(b, "servers-empty"))
    assert browser.find_elements(By.CSS_SELECTOR, "#servers tbody tr") == []
    assert server not in browser.page_source
    browser.get(stolen_from_dashboard)
    words = wait_for_state(browser, "error")
    assert "another dashboard session" in words, words
    browser.get(stolen_bearer)
    words = wait_for_state(browser, "error")
    assert "another user" in words, words

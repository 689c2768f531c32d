"""The dashboard's servers page in a real Chromium against a real daemon: sign in, the list,
errors in the API's words, one user's objects unseen by another. A server's status changing
on the page without a reload, with a real QEMU under TCG, and its console opened from the
page are the journey's (tests/browser/test_journey.py)."""

from collections.abc import Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from testbed.daemon_process import Api, Daemon, create_user, running_daemon
from tests.browser.dashboard_helpers import (
    click,
    error_text,
    server_row,
    server_status,
    sign_in,
    sign_out,
    signed_in,
    visible,
    wait_for,
)

# A server that would start at once under TCG: no drive to boot (SeaBIOS waits), little memory.
BARE_SERVER = b"name bare\ncpu 1000\nmem 64\npersistent true"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the module's tests; each test's objects are its own."""
    with running_daemon(tmp_path_factory.mktemp("dashboard")) as running:
        yield running


def stopped_server(daemon: Daemon, body: bytes = BARE_SERVER) -> str:
    return Api(daemon, daemon.url).properties("/servers/create/stopped", body)["server"]


def test_a_user_signs_in_sees_their_servers_and_another_user_sees_none(
    browser: webdriver.Chrome, daemon: Daemon
) -> None:
    server = stopped_server(daemon, b"name alpha\ncpu 1500\nmem 128\npersistent true")
    signed_in(browser, daemon.url, daemon)
    wait_for(browser, lambda b: server_status(b, server) == "stopped")
    cells = wait_for(
        browser, lambda b: [c.text for c in server_row(b, server).find_elements(By.XPATH, "./*")]
    )
    assert cells[:4] == ["alpha", "stopped", "1500", "128"]
    # The key was exchanged for a cookie the page's script cannot read, and not kept.
    assert browser.execute_script("return document.cookie") == ""
    assert browser.execute_script("return JSON.stringify(localStorage)") == "{}"
    assert daemon.secret not in browser.page_source

    sign_out(browser)
    other = create_user(daemon.state_dir)
    signed_in(browser, daemon.url, other)
    wait_for(browser, lambda b: visible(b, "servers-empty"))
    assert browser.find_elements(By.CSS_SELECTOR, "#servers tbody tr") == []
    assert server not in browser.page_source


def test_a_wrong_key_shows_the_apis_error(browser: webdriver.Chrome, daemon: Daemon) -> None:
    sign_in(browser, daemon.url, daemon, key="not-the-key")
    wait_for(browser, lambda b: error_text(b) != "")
    assert error_text(browser) == (
        "401 auth: Authentication failed: wrong user UUID or secret API key"
    )
    assert visible(browser, "sign-in-section") and not visible(browser, "servers-section")


def test_a_refused_action_shows_the_apis_error(browser: webdriver.Chrome, daemon: Daemon) -> None:
    # A server whose start fails: its drive does not exist any more.
    api = Api(daemon, daemon.url)
    drive = api.properties("/drives/create", b"name gone\nsize 1M")["drive"]
    server = stopped_server(daemon, BARE_SERVER + f"\nide:0:0 {drive}".encode())
    assert api.call(f"/drives/{drive}/destroy", b"").status == 204
    signed_in(browser, daemon.url, daemon)
    wait_for(browser, lambda b: server_status(b, server) == "stopped")
    click(browser, lambda b: server_row(b, server), "start")
    wait_for(browser, lambda b: error_text(b) != "")
    assert error_text(browser).startswith("404 missing: ")
    assert "could not be found" in error_text(browser)

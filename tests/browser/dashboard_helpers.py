"""Driving the dashboard in a real Chromium: signing in, finding a server's row, waiting for
what the page shows (bounded waits)."""

import subprocess
from collections.abc import Callable
from typing import TypeVar

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from testbed.daemon_process import BIN, Account, Daemon

WAIT_SECONDS = 15.0
T = TypeVar("T")


def wait_for(
    browser: webdriver.Chrome,
    condition: Callable[[webdriver.Chrome], T],
    timeout: float = WAIT_SECONDS,
) -> T:
    """What `condition(browser)` answers once it is true (TimeoutException after `timeout`)."""
    # A live update replaces rows: an element found a moment ago may be gone; look again.
    ignored = (StaleElementReferenceException, NoSuchElementException)
    return WebDriverWait(browser, timeout, 0.1, ignored_exceptions=ignored).until(condition)


def visible(browser: webdriver.Chrome, element_id: str) -> bool:
    return browser.find_element(By.ID, element_id).is_displayed()


def sign_in(browser: webdriver.Chrome, url: str, account: Account, key: str | None = None) -> None:
    """Open the dashboard at `url` and sign in as `account` (with `key`, if given, instead
    of its own secret)."""
    browser.get(url + "/")
    wait_for(browser, lambda b: visible(b, "sign-in-section"))
    browser.find_element(By.ID, "sign-in-user").send_keys(account.user)
    browser.find_element(By.ID, "sign-in-key").send_keys(account.secret if key is None else key)
    browser.find_element(By.CSS_SELECTOR, "#sign-in button[type=submit]").click()


def signed_in(browser: webdriver.Chrome, url: str, account: Account) -> None:
    """Sign in and wait for the servers page."""
    sign_in(browser, url, account)
    wait_for(browser, lambda b: visible(b, "servers-section"))


def sign_out(browser: webdriver.Chrome) -> None:
    browser.find_element(By.ID, "sign-out").click()
    wait_for(browser, lambda b: visible(b, "sign-in-section"))


def server_row(browser: webdriver.Chrome, server: str) -> WebElement:
    return browser.find_element(By.CSS_SELECTOR, f'#servers tr[data-server="{server}"]')


def server_status(browser: webdriver.Chrome, server: str) -> str:
    """The status the page shows for `server` ("" while it shows none). Read in one script:
    a live update replaces the row between a find and a read of an element."""
    script = "const c = document.querySelector(arguments[0]); return c ? c.textContent : '';"
    return str(browser.execute_script(script, f'#servers tr[data-server="{server}"] .status'))


def error_text(browser: webdriver.Chrome) -> str:
    box = browser.find_element(By.ID, "error")
    return box.text if box.is_displayed() else ""


def click(
    browser: webdriver.Chrome, row: Callable[[webdriver.Chrome], WebElement], action: str
) -> None:
    """Click the `action` button of the row `row` finds, finding it again if a live update
    replaced it meanwhile."""

    def clicked(b: webdriver.Chrome) -> bool:
        row(b).find_element(By.CSS_SELECTOR, f"[data-action={action}]").click()
        return True

    wait_for(browser, clicked)


def add_standard_image(daemon: Daemon, name: str, data: bytes) -> None:
    """Make a standard drive `name` holding `data` with the admin tool, as an operator does."""
    image = daemon.state_dir.parent / f"{name}.img"
    image.write_bytes(data)
    subprocess.run(
        [str(BIN / "openhosting-admin"), "--state-dir", str(daemon.state_dir),
         "standard", "add", str(image), "--name", name],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip

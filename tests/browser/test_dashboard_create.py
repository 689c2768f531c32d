"""A new server from a standard image, through the dashboard in a real Chromium: the page
makes a drive, images the standard drive into it with its progress shown, then makes the
server. The server is made stopped (no QEMU here: its start is the servers page's test)."""

import hashlib
import os
from collections.abc import Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from testbed.daemon_process import Api, Daemon, running_daemon
from tests.browser.dashboard_helpers import (
    add_standard_image,
    error_text,
    signed_in,
    visible,
    wait_for,
)

IMAGE_BYTES = 4 * 1024 * 1024
# Imaging slowed to this, so that its progress lasts long enough to be seen (about 2 s).
IMAGING_RATE = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    work = tmp_path_factory.mktemp("dashboard-create")
    env = {"OH_STORAGE_IMAGING_MAX_RATE": str(IMAGING_RATE)}
    with running_daemon(work, env=env) as running:
        yield running


def test_a_server_is_made_from_a_standard_image_with_the_copys_progress_shown(
    browser: webdriver.Chrome, daemon: Daemon
) -> None:
    data = os.urandom(IMAGE_BYTES)
    add_standard_image(daemon, "Tiny", data)
    signed_in(browser, daemon.url, daemon)
    browser.find_element(By.LINK_TEXT, "New server").click()
    wait_for(browser, lambda b: visible(b, "create-section"))
    wait_for(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#create-image option")))
    browser.find_element(By.ID, "create-name").send_keys("web")
    Select(browser.find_element(By.ID, "create-image")).select_by_visible_text("Tiny (4.0 MiB)")
    browser.find_element(By.ID, "create-start").click()  # made stopped
    browser.find_element(By.CSS_SELECTOR, "#create button[type=submit]").click()

    seen: set[str] = set()

    def progress_shown(b: webdriver.Chrome) -> bool:
        bar = b.find_element(By.ID, "create-imaging")
        if bar.is_displayed():
            seen.add(bar.get_attribute("aria-valuetext") or "")
        return any(text.endswith("%") and text != "100%" for text in seen)

    wait_for(browser, progress_shown)
    wait_for(browser, lambda b: b.current_url.endswith("#servers"), 30)
    row = "//table[@id='servers']//tr[th='web']"
    wait_for(browser, lambda b: b.find_element(By.XPATH, f"{row}/td[1]").text == "stopped")
    server_id = wait_for(
        browser, lambda b: b.find_element(By.XPATH, row).get_attribute("data-server")
    )
    assert error_text(browser) == ""

    api = Api(daemon, daemon.url)
    server = api.properties(f"/servers/{server_id}/info")
    drive = server["ide:0:0"]
    assert server["boot"] == "ide:0:0" and server["persistent"] == "true"
    hashed = api.properties(f"/drives/{drive}/hash")
    assert hashed["hash"] == hashlib.sha256(data).hexdigest()
    assert "imaging" not in api.properties(f"/drives/{drive}/info")

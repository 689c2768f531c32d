"""The dashboard's drives page in a real Chromium against a real daemon: create, resize,
destroy; an image uploaded from the browser in gzip chunks, through a dropped connection,
read back byte for byte; the same file again into its drive sends nothing."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select

from testbed.daemon_process import Api, Daemon, running_daemon
from tests.browser.dashboard_helpers import click, error_text, signed_in, visible, wait_for

UPLOAD_BYTES = 20 * 1024 * 1024
# The browser's upload slowed to this (Chromium's network emulation), so that the connection
# can be cut while it runs.
UPLOAD_THROUGHPUT = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("dashboard-drives")) as running:
        yield running


def open_drives(browser: webdriver.Chrome, daemon: Daemon) -> None:
    signed_in(browser, daemon.url, daemon)
    browser.find_element(By.LINK_TEXT, "Drives").click()
    wait_for(browser, lambda b: visible(b, "drives-section"))


def drive_xpath(name: str) -> str:
    return f"//table[@id='drives']//tr[th='{name}']"


def drive_row(browser: webdriver.Chrome, name: str) -> WebElement:
    return browser.find_element(By.XPATH, drive_xpath(name))


def test_a_drive_is_made_resized_and_destroyed_from_the_page(
    browser: webdriver.Chrome, daemon: Daemon
) -> None:
    open_drives(browser, daemon)
    browser.find_element(By.ID, "drive-name").send_keys("scratch")
    browser.find_element(By.ID, "drive-size").send_keys("1M")
    browser.find_element(By.CSS_SELECTOR, "#drive-create button[type=submit]").click()
    wait_for(
        browser,
        lambda b: drive_row(b, "scratch").find_element(By.CSS_SELECTOR, ".size").text == "1.0 MiB",
    )
    drive = wait_for(browser, lambda b: drive_row(b, "scratch").get_attribute("data-drive"))
    click(browser, lambda b: drive_row(b, "scratch"), "resize")
    prompt = wait_for(browser, lambda b: b.switch_to.alert)
    prompt.send_keys("3M")
    prompt.accept()
    wait_for(
        browser,
        lambda b: drive_row(b, "scratch").find_element(By.CSS_SELECTOR, ".size").text == "3.0 MiB",
    )
    assert Api(daemon, daemon.url).properties(f"/drives/{drive}/info")["size"] == "3145728"

    click(browser, lambda b: drive_row(b, "scratch"), "destroy")
    wait_for(browser, lambda b: b.switch_to.alert).accept()
    wait_for(browser, lambda b: not b.find_elements(By.XPATH, drive_xpath("scratch")))
    assert Api(daemon, daemon.url).call(f"/drives/{drive}/info").status == 404
    assert error_text(browser) == ""


def test_an_image_uploaded_through_a_dropped_connection_reads_back_byte_for_byte(
    browser: webdriver.Chrome, daemon: Daemon, tmp_path: Path
) -> None:
    data = os.urandom(UPLOAD_BYTES)
    image = tmp_path / "image.raw"
    image.write_bytes(data)
    open_drives(browser, daemon)
    browser.set_network_conditions(
        offline=False, latency=0, download_throughput=-1, upload_throughput=UPLOAD_THROUGHPUT
    )
    browser.find_element(By.ID, "upload-file").send_keys(str(image))
    browser.find_element(By.CSS_SELECTOR, "#upload button[type=submit]").click()
    progress = lambda b: int(b.find_element(By.ID, "upload-bar").get_attribute("value") or 0)  # noqa: E731
    wait_for(browser, lambda b: progress(b) >= 25, 30)
    assert progress(browser) < 100
    # The connection drops, and comes back: the page sends the chunk again and goes on.
    browser.set_network_conditions(
        offline=True, latency=0, download_throughput=-1, upload_throughput=UPLOAD_THROUGHPUT
    )
    wait_for(browser, lambda b: "Connection lost" in b.find_element(By.ID, "upload-step").text)
    browser.set_network_conditions(offline=False, latency=0, throughput=-1)
    wait_for(browser, lambda b: "Uploaded" in b.find_element(By.ID, "upload-step").text, 60)
    assert error_text(browser) == ""

    drive = wait_for(browser, lambda b: drive_row(b, "image.raw").get_attribute("data-drive"))
    if target := os.environ.get("OH_DRIVES_SCREENSHOT"):  # docs/images/drives.png
        assert browser.save_screenshot(target)
    api = Api(daemon, daemon.url)
    status, _, read_back = api.call(f"/drives/{drive}/read")
    assert status == 200 and read_back == data
    writes = api.properties(f"/drives/{drive}/info")["write:requests"]

    # The same file into its drive again (a resume after the page was closed): every chunk
    # is already there, so nothing is written.
    Select(browser.find_element(By.ID, "upload-drive")).select_by_value(drive)
    browser.find_element(By.ID, "upload-file").send_keys(str(image))
    browser.find_element(By.CSS_SELECTOR, "#upload button[type=submit]").click()
    wait_for(browser, lambda b: "Uploaded" in b.find_element(By.ID, "upload-step").text, 60)
    assert api.properties(f"/drives/{drive}/info")["write:requests"] == writes

"""The dashboard's IPs and VLANs page and its account page (balance, limits, usage per day as
a chart), in a real Chromium against a real daemon that meters usage every second."""

import subprocess
import time
from collections.abc import Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from testbed.daemon_process import BIN, Api, Daemon, running_daemon
from tests.browser.dashboard_helpers import click, error_text, signed_in, visible, wait_for


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    env = {"OH_BILLING_ENABLED": "true", "OH_BILLING_INTERVAL": "1"}
    with running_daemon(tmp_path_factory.mktemp("dashboard-account"), env=env) as running:
        admin(running, "account", "credit", running.user, "25")  # billing: nothing on credit
        yield running


def admin(daemon: Daemon, *arguments: str) -> None:
    subprocess.run(
        [str(BIN / "openhosting-admin"), "--state-dir", str(daemon.state_dir), *arguments],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def open_section(browser: webdriver.Chrome, daemon: Daemon, link: str, section: str) -> None:
    signed_in(browser, daemon.url, daemon)
    browser.find_element(By.LINK_TEXT, link).click()
    wait_for(browser, lambda b: visible(b, section))


def test_a_vlan_is_made_and_given_up_from_the_page(
    browser: webdriver.Chrome, daemon: Daemon
) -> None:
    open_section(browser, daemon, "IPs and VLANs", "resources-section")
    Select(browser.find_element(By.ID, "resource-type")).select_by_value("vlan")
    browser.find_element(By.ID, "resource-name").send_keys("office")
    browser.find_element(By.CSS_SELECTOR, "#resource-create button[type=submit]").click()
    row_xpath = "//table[@id='resources']//tr[th='office']"
    row = wait_for(browser, lambda b: b.find_elements(By.XPATH, row_xpath))[0]
    vlan = row.get_attribute("data-resource")
    assert Api(daemon, daemon.url).properties(f"/resources/vlan/{vlan}/info")["name"] == "office"
    click(browser, lambda b: b.find_element(By.XPATH, row_xpath), "destroy")
    wait_for(browser, lambda b: b.switch_to.alert).accept()
    wait_for(browser, lambda b: not b.find_elements(By.XPATH, row_xpath))
    assert error_text(browser) == ""


def test_the_account_page_shows_balance_limits_and_usage_per_day(
    browser: webdriver.Chrome, daemon: Daemon
) -> None:
    admin(daemon, "user", "set", daemon.user, "--max-servers", "5")
    Api(daemon, daemon.url).properties("/drives/create", b"name metered\nsize 1G")
    # The meter records an interval a second after the first: wait for one.
    api = Api(daemon, daemon.url)
    for _ in range(100):
        if b"drive:bytes 0\n" not in api.call("/account/usage").body:
            break
        time.sleep(0.1)
    open_section(browser, daemon, "Account", "account-section")
    limits = wait_for(
        browser, lambda b: b.find_elements(By.CSS_SELECTOR, '#account tr[data-key="servers"] td')
    )
    assert [cell.text for cell in limits] == ["0", "5"]
    balance = browser.find_element(By.XPATH, "//table[@id='account']//tr[th='Balance']/td").text
    assert balance.startswith("24.") or balance.startswith("25.")
    wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#usage-chart svg rect"))
    # One day (today's), its drive bytes averaged over the seconds metered: part of them
    # before the drive was made.
    (today,) = browser.find_elements(By.CSS_SELECTOR, "#usage tbody tr")
    day, charge, _, _, drive_bytes = (cell.text for cell in today.find_elements(By.XPATH, "./*"))
    assert day == time.strftime("%Y-%m-%d", time.gmtime())
    assert float(charge) >= 0 and drive_bytes.endswith(("MiB", "GiB"))  # a tiny charge
    Select(browser.find_element(By.ID, "usage-metric")).select_by_value("drive:bytes")
    title = browser.find_element(By.CSS_SELECTOR, "#usage-chart svg rect title")
    assert title.get_attribute("textContent").endswith(("MiB", "GiB"))

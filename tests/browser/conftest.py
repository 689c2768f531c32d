"""A real headless Chromium (Debian's `chromium`, driven through `chromium-driver`)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from testbed.chromium import CHROMEDRIVER, chromium_options


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    """A fresh headless Chromium with its own profile, quit (and its profile removed) after."""
    profile = Path(tempfile.mkdtemp(prefix="openhosting-chromium-"))
    driver = webdriver.Chrome(
        options=chromium_options(profile), service=Service(executable_path=CHROMEDRIVER)
    )
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)

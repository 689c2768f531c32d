"""Another site's page against a browser that holds the API's Basic credentials (docs/security.md,
"Cross-site request forgery"): a customer who once read the API in their browser (the daemon's
401 asks for Basic credentials, and the browser keeps what was typed for the origin) has a
browser that sends them by itself with any site's form posts. Such a post must change nothing.
The other site is a page served on loopback under another host name (`localhost` for the
daemon's `127.0.0.1`): another site for the browser."""

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver

from testbed.daemon_process import Api, Daemon, free_port, running_daemon, wait_listening
from tests.browser.dashboard_helpers import wait_for

# A text/plain form's body is NAME=VALUE lines: the API reads them as KEY VALUE lines.
FORGED_BODY_FIELD = "name forged\nsize 1M\nuser:pad"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("basic-csrf")) as running:
        yield running


@pytest.fixture
def evil_site(tmp_path: Path, daemon: Daemon) -> Iterator[str]:
    """The attacker's page, posting a form to the daemon as soon as it loads."""
    page = tmp_path / "evil" / "index.html"
    page.parent.mkdir()
    name = FORGED_BODY_FIELD.replace("\n", "&#10;")
    page.write_text(
        "<!doctype html><form id=f method=POST enctype=text/plain "
        f'action="{daemon.url}/drives/create"><input name="{name}" value="1"></form>'
        "<script>document.getElementById('f').submit()</script>"
    )
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
         "--directory", str(page.parent)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_listening(port, server)
        yield f"http://localhost:{port}/index.html"
    finally:
        server.terminate()
        server.wait(timeout=10)


def drive_names(daemon: Daemon) -> list[str]:
    status, _, body = Api(daemon, daemon.url).call("/drives/info")
    assert status == 200
    return [
        line.split(" ", 1)[1] for line in body.decode().splitlines() if line.startswith("name ")
    ]


def test_another_sites_form_post_with_the_browsers_basic_credentials_changes_nothing(
    browser: webdriver.Chrome, daemon: Daemon, evil_site: str
) -> None:
    # The customer reads the API in the browser once: it keeps the credentials for the origin.
    browser.get(daemon.url.replace("://", f"://{daemon.user}:{daemon.secret}@") + "/drives/list")
    browser.get(daemon.url + "/drives/list")
    assert "Authentication required" not in browser.page_source  # sent without asking
    browser.get(evil_site)
    wait_for(browser, lambda b: b.current_url == f"{daemon.url}/drives/create")
    # The post's answer, shown in the tab: refused (on the code before, the drive's properties).
    wait_for(browser, lambda b: "another site" in b.page_source or "forged" in b.page_source)
    assert "Refused: this request came from another site's page" in browser.page_source
    assert "forged" not in drive_names(daemon)

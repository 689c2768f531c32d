"""The dashboard in a real Chromium against what a hostile customer or page can put in front
of it (docs/security.md, "The dashboard's page"): names set through the API to markup and
script are shown as text on every page and never run; an answer of the daemon's own origin
holding a user's bytes is never run as a script (the page's CSP allows 'self'). Each payload
sets `window.PWNED`: the test asserts it never did. What the page read stays in no cache
the next user of the browser could read after the sign-out."""

from collections.abc import Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from testbed.daemon_process import Api, Daemon, running_daemon
from tests.browser.dashboard_helpers import sign_out, signed_in, visible, wait_for

PAYLOADS = (
    "<img src=x onerror=\"window.PWNED='img'\">",
    "\"><script>window.PWNED='script'</script>",
    "javascript:window.PWNED='url'",
    "'><svg onload=window.PWNED='svg'>",
)
SECTIONS = ("servers", "drives", "resources", "account", "create")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("dashboard-hostile")) as running:
        yield running


def pwned(browser: webdriver.Chrome) -> object:
    return browser.execute_script("return window.PWNED === undefined ? null : window.PWNED")


def test_names_of_markup_and_script_are_shown_as_text_and_never_run(
    browser: webdriver.Chrome, daemon: Daemon
) -> None:
    api = Api(daemon, daemon.url)
    for payload in PAYLOADS:
        name = payload.encode()
        api.properties("/drives/create", b"name " + name + b"\nsize 1M")
        api.properties(
            "/servers/create/stopped",
            b"name " + name + b"\ncpu 500\nmem 64\npersistent true\ntags " + b"x"
            b"\nuser:note " + name,
        )
        api.properties("/resources/vlan/create", b"name " + name)
    signed_in(browser, daemon.url, daemon)
    for section in SECTIONS:
        browser.find_element(By.CSS_SELECTOR, f'#nav a[href="#{section}"]').click()
        wait_for(browser, lambda b, s=section: visible(b, f"{s}-section"))
        if section in ("servers", "drives", "resources"):
            shown = wait_for(
                browser,
                lambda b, s=section: (
                    len(b.find_elements(By.CSS_SELECTOR, f"#{s} tbody th")) == len(PAYLOADS)
                    and [th.text for th in b.find_elements(By.CSS_SELECTOR, f"#{s} tbody th")]
                ),
            )
            assert sorted(shown) == sorted(PAYLOADS), section
            assert not browser.find_elements(By.CSS_SELECTOR, "main img, main script, main svg")
        assert pwned(browser) is None, section
        assert browser.title == "Open Hosting"


def test_a_drives_bytes_are_never_run_as_a_script_of_the_dashboard(
    browser: webdriver.Chrome, daemon: Daemon
) -> None:
    """Chromium ran `/drives/D/read` (application/octet-stream, without nosniff) as a script
    of the daemon's origin, which the dashboard's `script-src 'self'` allows: any markup
    injected into the page could have run the user's bytes."""
    api = Api(daemon, daemon.url)
    drive = api.properties("/drives/create", b"name script\nsize 4k")["drive"]
    status, _, _ = api.call(
        f"/drives/{drive}/write",
        b"window.PWNED = 'drive'; //",
        {"Content-Type": "application/octet-stream"},
    )
    assert status == 204
    signed_in(browser, daemon.url, daemon)
    loaded = browser.execute_async_script(
        """const [src, done] = arguments;
        const script = document.createElement("script");
        script.onload = () => done("loaded");
        script.onerror = () => done("refused");
        script.src = src;
        document.head.append(script);""",
        f"/drives/{drive}/read/0/26",
    )
    assert loaded == "refused"
    assert pwned(browser) is None


def test_what_the_page_read_is_not_in_the_browsers_cache_after_the_sign_out(
    browser: webdriver.Chrome, daemon: Daemon
) -> None:
    """Chromium kept the dashboard's reads in its cache (on disk in the profile): after the
    sign-out, the servers' list with their VNC passwords was read back from it, with no
    request to the daemon."""
    api = Api(daemon, daemon.url)
    api.properties("/servers/create/stopped", b"name cached\ncpu 500\nmem 64\nvnc:password s3cr3t")
    signed_in(browser, daemon.url, daemon)
    wait_for(browser, lambda b: "cached" in b.find_element(By.ID, "servers").text)
    sign_out(browser)
    from_cache = browser.execute_async_script(
        """const done = arguments[0];
        fetch("/servers/info", {cache: "only-if-cached", mode: "same-origin",
                                headers: {Accept: "application/json"}})
          .then(async (r) => done(`${r.status} ${await r.text()}`), (e) => done(`none: ${e}`));"""
    )
    assert from_cache.startswith("none:"), from_cache
    assert "s3cr3t" not in from_cache


@pytest.mark.parametrize("name", ["constructor", "__proto__", "toString"])
def test_an_address_naming_a_property_of_every_object_shows_the_servers(
    browser: webdriver.Chrome, daemon: Daemon, name: str
) -> None:
    """`#constructor` matched a key every object inherits and showed no section at all."""
    signed_in(browser, daemon.url, daemon)
    browser.get(f"{daemon.url}/#{name}")
    browser.refresh()
    wait_for(browser, lambda b: visible(b, "servers-section"))
    sign_out(browser)

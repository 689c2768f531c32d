"""A tiny guest with a VNC console in a real daemon, and the console page in a real Chromium:
what tests/browser/test_journey.py and `python -m bench console` share.

The tiny guest (testbed/build_guest.py) keeps its shell on the serial port; its screen
is the VGA text console, where no program reads the keyboard. `read_keyboard_to_serial`
starts one through the serial shell: each line typed on the screen's console (tty1) is
echoed on that screen by the kernel and copied to the serial log as `KEYS:<line>`, so keys
sent through noVNC can be seen to arrive.
"""

import socket
import time
from pathlib import Path

from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from testbed.build_guest import READY_MARKER
from testbed.daemon_process import Api
from testbed.serial_console import read_serial_log

VNC_PASSWORD = "secret1"
BOOT_TIMEOUT = 90.0  # TCG on a machine shared with other tests
KEYS_PREFIX = "KEYS:"
# A command printing `marker` whose own text does not contain it.
_READER = (
    "(while read -r line </dev/tty1; do echo '" + KEYS_PREFIX + '\'"$line" >/dev/ttyS0; done)'
    " >/dev/null 2>&1 & echo OH-KEYS-''READER"
)

# How many colours the console's canvas shows (stops counting at 2): one means a blank screen.
CANVAS_COLOURS = """
const canvas = document.querySelector('#screen canvas');
if (!canvas || !canvas.width || !canvas.height) return 0;
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
for (let i = 4; i < data.length; i += 4) {
  if (data[i] !== data[0] || data[i + 1] !== data[1] || data[i + 2] !== data[2]) return 2;
}
return 1;
"""


def start_console_server(api: Api, image: Path) -> str:
    """A running server booting the tiny guest from a plain copy of `image`, with a VNC
    password; returns its UUID."""
    data = image.read_bytes()
    drive = api.properties(
        "/drives/create", f"name guest\nsize {len(data)}\nencryption:cipher none".encode()
    )["drive"]
    status, _, answer = api.call(f"/drives/{drive}/write", data)
    assert status == 204, answer
    body = (
        f"name console\ncpu 2000\nmem 256\npersistent true\nide:0:0 {drive}\nboot ide:0:0\n"
        f"vnc:password {VNC_PASSWORD}"
    )
    return api.properties("/servers/create", body.encode())["server"]


def wait_for_serial(log: Path, text: str, timeout: float = BOOT_TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    while text not in (content := read_serial_log(log)):
        assert time.monotonic() < deadline, f"{text!r} not in the serial log:\n{content[-2000:]}"
        time.sleep(0.2)
    return content


def read_keyboard_to_serial(run_dir: Path) -> None:
    """Once the guest is ready, start the tty1 reader through its serial shell."""
    wait_for_serial(run_dir / "serial.log", READY_MARKER)
    with socket.socket(socket.AF_UNIX) as console:
        console.settimeout(10)
        console.connect(str(run_dir / "console.sock"))
        console.sendall(f"{_READER}\n".encode())
        wait_for_serial(run_dir / "serial.log", "OH-KEYS-READER", timeout=30)


def console_state(browser: WebDriver) -> tuple[str, str]:
    """The page's status: (state, words)."""
    status = browser.find_element("id", "status")
    return status.get_attribute("data-state") or "", status.text


def wait_for_state(browser: WebDriver, state: str, timeout: float = 30) -> str:
    """Wait until the page's status is `state`; its words."""
    WebDriverWait(browser, timeout, poll_frequency=0.02).until(
        lambda driver: console_state(driver)[0] == state,
        message=f"the console page never said {state!r}",
    )
    return console_state(browser)[1]


def wait_for_screen(browser: WebDriver, timeout: float = 30) -> None:
    """Wait until the console's canvas shows more than one colour: a frame of the screen."""
    WebDriverWait(browser, timeout, poll_frequency=0.01).until(
        lambda driver: driver.execute_script(CANVAS_COLOURS) > 1,
        message="the console's canvas stayed blank",
    )

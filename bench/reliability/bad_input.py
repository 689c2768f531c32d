"""The bad-input campaign: Hypothesis draws requests over the whole route table (methods,
paths holding the user's own objects, another user's, guessed and malformed ones, offsets,
sizes and suffixes, bodies as text, JSON, gzip, broken gzip, huge or empty, headers that lie
about the length, chunked bodies, `Expect`, odd content types, bad Basic auth) and sends each
as raw bytes to a real daemon. Invariants: no 5xx; an answer (or a close) within the idle
timeout; nothing of the other user changes; the daemon's RSS stays within a bound. The
tables of testbed/hostile_input.py (`make test` sends them) seed the bodies and headers; an input
found failing here belongs there as a regression case."""

import base64
import contextlib
import gzip
import re
import socket
import subprocess
import time
import uuid as uuid_module
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from bench.reliability import checkers
from bench.reliability.load import rss_bytes
from bench.reliability.table import CampaignResult
from openhosting.api.routes import ROUTES
from testbed.daemon_process import BIN, Account, Api, DaemonProcess, create_user
from testbed.hostile_input import HOSTILE_HEADERS, JSON_BODIES, TEXT_BODIES, fill

IDLE_TIMEOUT = 3  # the daemon's api.idle_timeout here: a stalled body is refused this fast
ANSWER_MARGIN = 5.0  # beyond the idle timeout: an answer later than this is a hang
RSS_GROWTH_BOUND = 64 * 1024 * 1024
# What a victim's info may change by on its own (counters of reads the owner makes).
_STATUS = re.compile(rb"(?:^|\r\n)HTTP/1\.[01] (\d{3}) [^\r\n]*\r\n")
_COUNTERS = re.compile(rb"^(read|write):(bytes|requests) .*$", re.MULTILINE)


@dataclass(frozen=True)
class Objects:
    """The ids that paths are filled with: one user's own and the other's."""

    drive: str
    source: str
    server: str
    ip: str
    vlan: str


def make_objects(api: Api) -> Objects:
    drive = api.properties("/drives/create", b"size 1M\nencryption:cipher none")["drive"]
    source = api.properties("/drives/create", b"size 64k")["drive"]
    server = api.properties("/servers/create/stopped", b"name s\ncpu 1000\nmem 256")["server"]
    ip = api.properties("/resources/ip/create", b"")["resource"]
    vlan = api.properties("/resources/vlan/create", b"")["resource"]
    return Objects(drive, source, server, ip, vlan)


def requests(own: Objects, other: Objects, account: Account) -> st.SearchStrategy[bytes]:
    """Whole HTTP requests as bytes."""
    guessed = st.builds(lambda n: str(uuid_module.UUID(int=n)), st.integers(0, 2**128 - 1))
    odd_ids = st.sampled_from(["", "x", "../..", "%00", own.drive.upper(), "ffffffff-ffff-"
                               "ffff-ffff-ffffffffffff", own.drive + "x"])  # fmt: skip

    def ids(name: str) -> st.SearchStrategy[str]:
        return st.one_of(
            st.just(getattr(own, name)), st.just(getattr(other, name)), guessed, odd_ids
        )

    sizes = st.one_of(
        st.integers(0, 2**70).map(str),
        st.tuples(st.integers(0, 4096), st.sampled_from("kKmMgGtTx")).map("%d%s".__mod__),
        st.sampled_from(["-1", "0x10", "1.5", "", "１"]),
    )  # fmt: skip
    values = st.fixed_dictionaries({
        "drive": ids("drive"), "source": ids("source"), "server": ids("server"),
        "offset": sizes, "size": sizes,
        "conversion": st.sampled_from(["gzip", "gunzip", "zip", "", "gzip/gzip"]),
        "type": st.sampled_from(["ip", "vlan", "x", "IP"]),
        "resource": st.sampled_from([own.ip, other.ip, own.vlan, other.vlan, "1.2.3.4", "x"]),
        # The console page's files: noVNC's modules and the page's own (no auth asked).
        "path": st.sampled_from(["core/rfb.js", "vendor/pako/lib/zlib/inflate.js", "core/",
                                 "core/../../../etc/passwd", "../vnc.html", "core/%2e%2e/x.js"]),
        "asset": st.sampled_from(["console.js", "console.css", "index.html", "..", "x"]),
    })  # fmt: skip
    raw = st.binary(max_size=2048)
    bodies = st.one_of(
        st.sampled_from([b"", *TEXT_BODIES, *JSON_BODIES]),
        raw,
        raw.map(gzip.compress),
        raw.map(lambda data: gzip.compress(data)[: max(1, len(gzip.compress(data)) // 2)]),
        st.integers(64 * 1024, 300 * 1024).map(lambda n: b"x" * n),
        st.text(max_size=500).map(lambda text: text.encode("utf-8", "surrogatepass")),
    )
    good = f"Authorization: {account.auth_header}"
    auth = st.sampled_from([
        good, good, good, good, "",
        "Authorization: Basic " + base64.b64encode(f"{other.drive}:x".encode()).decode(),
        "Authorization: Basic !!!",
        "Authorization: Basic " + base64.b64encode(b"\xff:\xfe").decode(),
        f"Authorization: Bearer {account.secret}", "Authorization: Basic",
    ])  # fmt: skip
    headers = st.lists(
        st.sampled_from([
            *(f"{k}: {v}" for h in HOSTILE_HEADERS for k, v in h.items() if k != "Host"),
            "Content-Type: application/json", "Content-Type: text/plain",
            "Content-Encoding: gzip", "Accept: application/json", "Expect: 100-continue",
            "Content-Type: application/x-www-form-urlencoded",
        ]),
        max_size=3,
    )  # fmt: skip
    framing = st.sampled_from(["exact"] * 12 + ["chunked", "chunked", "less", "none", "more"])
    routes = st.sampled_from([r for r in ROUTES if r.command != "events.stream"])
    methods = st.sampled_from(["POST", "POST", "GET", "HEAD", "PUT", "DELETE", "OPTIONS"])
    return st.builds(
        build_request, routes.map(lambda r: r.path), values, methods, bodies, auth, headers,
        framing,
    )  # fmt: skip


def build_request(
    template: str,
    values: dict[str, str],
    method: str,
    body: bytes,
    auth: str,
    headers: list[str],
    framing: str,
) -> bytes:
    path = fill(template, values)
    path = "/" + "/".join(
        part.replace("%", "%25").replace(" ", "%20") for part in path.strip("/").split("/")
    )
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *headers]
    lines += [auth] if auth else []
    if framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
        payload = (
            (f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n") if body else b"0\r\n\r\n"
        )
    else:
        length = {"exact": len(body), "more": len(body) + 100, "less": len(body) // 2}.get(framing)
        if length is not None:
            lines.append(f"Content-Length: {length}")
        payload = body
    return "\r\n".join(lines).encode("utf-8", "surrogatepass") + b"\r\n\r\n" + payload


def exchange(port: int, request: bytes) -> tuple[int | None, float, bytes]:
    """Send `request`; the status answered (None: closed without one), the time it took and
    what came back."""
    began = time.monotonic()
    timeout = IDLE_TIMEOUT + ANSWER_MARGIN
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        # Refused before the whole body went: its answer may still be there.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.sendall(request)
        answer = b""
        try:
            # Until the first answer that is not `100 Continue` (Expect), or the close. (After
            # answering a request whose body it did not read, the daemon may keep reading it
            # for aiohttp's lingering time, 10 s, before it closes: that is not a late answer.)
            while not (final := _final_status(answer)) and (chunk := connection.recv(65536)):
                answer += chunk
        except ConnectionResetError:
            final = _final_status(answer)
        except TimeoutError:
            return None, float("inf"), answer
    return final, time.monotonic() - began, answer


def _final_status(answer: bytes) -> int | None:
    codes = [int(code) for code in _STATUS.findall(answer) if not code.startswith(b"1")]
    return codes[0] if codes else None


def snapshot(api: Api) -> bytes:
    """What the other user can see of their own objects, counters left out."""
    parts = [api.call(path).body for path in
             ("/drives/info", "/servers/info", "/resources/info", "/drives/list")]  # fmt: skip
    return _COUNTERS.sub(b"", b"\n--\n".join(parts))


def run(work_dir: Path, seed_value: int, examples: int, seconds: float) -> CampaignResult:
    state = work_dir / "state"
    accounts = [create_user(state), create_user(state)]
    for account in accounts:  # nothing fuzzed may boot a VM: any start is 402 `billing`
        subprocess.run([str(BIN / "openhosting-admin"), "--state-dir", str(state), "user",
                        "set", account.user, "--max-mem", "1"],
                       check=True, capture_output=True, timeout=60)  # fmt: skip
    # The login throttle (tested in `make test`) would spend the campaign's time making bad
    # Basic auth wait: here it lets every failure through at once.
    env = {
        "OH_API_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
        "OH_API_AUTH_FAILURES_FREE": "1000000",
        "OH_API_AUTH_FAILURES_MAX": "1000000",
        "OH_HYPERVISOR_RUN_DIR": str(work_dir / "run"),  # removed with the campaign's
    }
    daemon = DaemonProcess(state, work_dir / "daemon.log", env=env)
    result = CampaignResult("input")
    try:
        own_api, other_api = (Api(account, daemon.url) for account in accounts)
        own, other = make_objects(own_api), make_objects(other_api)
        other_content = other_api.call(f"/drives/{other.drive}/write", b"mine" * 1024)
        assert other_content.status == 204
        before = snapshot(other_api)
        rss_start = rss_bytes(daemon.pid)
        deadline = time.monotonic() + seconds
        statuses: dict[int | None, int] = {}

        @seed(seed_value)
        @settings(max_examples=examples, deadline=None, database=None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(request=requests(own, other, accounts[0]))
        def attempt(request: bytes) -> None:
            if time.monotonic() > deadline:
                return
            status, took, answer = exchange(daemon.port, request)
            result.operations += 1
            statuses[status] = statuses.get(status, 0) + 1
            if checkers.is_write_past_end(answer):
                status = 400  # the contract's 507 `full` for bad input: judged on time only
            result.violations += checkers.check_answer(
                repr(request[:300]), status, took, IDLE_TIMEOUT + ANSWER_MARGIN
            )

        attempt()
        if snapshot(other_api) != before:
            result.violations.append("the other user's objects changed")
        if other_api.call(f"/drives/{other.drive}/read/0/4096").body != b"mine" * 1024:
            result.violations.append("the other user's drive changed")
        rss_end = rss_bytes(daemon.pid)
        result.violations += checkers.check_daemon_resources(
            (rss_start, rss_end), (0, 0), RSS_GROWTH_BOUND
        )
        result.faults = result.operations
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items(), key=str))
        result.notes.append(f"answers by status {counts}")
        result.notes.append(f"RSS {rss_start >> 20} → {rss_end >> 20} MiB")
    finally:
        daemon.stop()
    return result

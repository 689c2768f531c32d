"""`make cluster` (scripts/cluster, testbed/cluster.py) as a user runs it: started as a
process, it prints the export lines; through its API, drives kept apart by `avoid` land on
different hosts every time and a server starts on an agent's host (its agent in a network
namespace, reached over the fabric); SIGTERM stops it and leaves nothing: no namespace, no
process it started, no directory.

Its agents run the fake hypervisor here (a VM on a real agent over QEMU is
tests/cluster/test_host_agents.py's); its namespaces and fabric /24 are this test's own, so
that a `make cluster` running beside it is left alone.
"""

import os
import re
import select
import signal
import subprocess
import time
from pathlib import Path

from testbed.cluster import namespaces
from testbed.daemon_process import Account, Api, free_port

REPOSITORY = Path(__file__).resolve().parents[2]
START_TIMEOUT = 120.0  # PostgreSQL, the CA, three agents and a daemon, on a busy machine
STOP_TIMEOUT = 30.0


def read_until_exports(process: subprocess.Popen[bytes]) -> str:
    """What the cluster printed up to its `pids` line (bounded wait)."""
    assert process.stdout is not None
    deadline, output = time.monotonic() + START_TIMEOUT, b""
    while b"\npids " not in output or not output.endswith(b"\n"):
        left = deadline - time.monotonic()
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, left))
        chunk = os.read(process.stdout.fileno(), 4096) if ready else b""
        if not chunk:
            raise AssertionError(f"make cluster did not start: {output.decode()[-3000:]}")
        output += chunk
    return output.decode()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def test_make_cluster_places_apart_starts_on_an_agent_and_leaves_nothing() -> None:
    tag = os.getpid() % 100
    prefix, subnet = f"oht{tag}-", f"10.243.{100 + tag}"
    port = free_port()
    process = subprocess.Popen(
        [str(REPOSITORY / "scripts" / "cluster"), "--driver", "fake", "--port", str(port),
         "--prefix", prefix, "--subnet", subnet],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        printed = read_until_exports(process)
        uri = re.search(r"^export OHURI=(\S+)$", printed, re.M)
        auth = re.search(r"^export OHAUTH=([^:\s]+):(\S+)$", printed, re.M)
        pids_line = re.search(r"^pids ([\d ]+)$", printed, re.M)
        assert uri and auth and pids_line, printed
        assert uri.group(1) == f"http://127.0.0.1:{port}/"
        pids = [int(pid) for pid in pids_line.group(1).split()]
        work = re.search(r"\(log (\S+)/api\.log\)", printed)
        assert work, printed
        assert {f"{prefix}fabric", f"{prefix}hv1", f"{prefix}hv2", f"{prefix}hv3"} <= namespaces()
        api = Api(Account(auth.group(1), auth.group(2)), uri.group(1).rstrip("/"))

        # Each drive avoiding all before it: four hosts (the API node's and hv1–hv3), four
        # different hosts, every time.
        for _round in range(2):
            made: list[str] = []
            hosts: list[str] = []
            for index in range(4):
                body = f"name d{index}\nsize 1M\n" + "".join(f"avoid {d}\n" for d in made)
                info = api.properties("/drives/create", body.encode())
                made.append(info["drive"])
                hosts.append(info["host"])
            assert sorted(hosts) == ["api", "hv1", "hv2", "hv3"], hosts

        # A server booting from a drive on an agent's host starts there.
        drive = made[hosts.index("hv2")]
        body = f"name s\ncpu 500\nmem 64\npersistent true\nide:0:0 {drive}\nboot ide:0:0\n"
        server = api.properties("/servers/create/stopped", body.encode())["server"]
        started = api.call(f"/servers/{server}/start", b"")
        assert started.status == 204, started
        info = api.properties(f"/servers/{server}/info")
        assert (info["status"], info["host"]) == ("active", "hv2")
        assert api.call(f"/servers/{server}/stop", b"").status == 204
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
        try:
            code = process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()  # its own stop hangs: the test fails, the machine is not held
            process.wait()
            raise
        if process.stdout is not None:
            process.stdout.close()
    assert code == 0, code
    left = {name for name in namespaces() if name.startswith(prefix)}
    assert left == set()
    assert [pid for pid in pids if alive(pid)] == []
    assert not Path(work.group(1)).exists()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    assert f"{prefix}fabric" not in links.stdout

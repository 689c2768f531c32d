"""`cpu` on a real VM (TCG): the quota holds the guest's vCPU threads only, so a server at the
smallest `cpu` still obeys reset, set and destroy at once (issue 13: a quota on the whole QEMU
process starved its monitor; reset timed out and destroy took 30 s)."""

import asyncio
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from openhosting.hypervisor.cpu_quota import (
    FLOOR_MHZ,
    CgroupLayout,
    limited_threads,
    quota_us,
    read_cpu_quota,
)
from openhosting.services.platform import Platform
from tests.integration.server_helpers import create_server, qemu_driver, upload_guest

PROMPT = 5.0  # seconds; generous: QMP answers in milliseconds when its thread may run


def group_threads(layout: CgroupLayout, server: str) -> set[int]:
    """The threads in the server's own (unlimited) group."""
    text = (layout.group_of(server) / layout.threads_file).read_text()
    return {int(line) for line in text.split()}


def nr_throttled(layout: CgroupLayout, server: str) -> int:
    """How many periods the vCPU threads were held back by their quota."""
    stat = (layout.vcpu_group_of(server) / "cpu.stat").read_text().split()
    return int(stat[stat.index("nr_throttled") + 1])


async def test_at_the_cpu_floor_only_the_vcpus_are_limited_and_the_server_obeys_at_once(
    client: TestClient, auth: dict[str, str], platform: Platform, tiny_guest_image: Path,
    servers_cleanup: None,
) -> None:  # fmt: skip
    lifecycle = platform.servers.lifecycle
    layout = qemu_driver(platform).cgroup
    if layout is None:
        pytest.fail("this host has no cpu cgroup controller: cpu cannot be enforced")
    core_mhz = platform.config.hypervisor.core_mhz
    drive = await upload_guest(client, auth, tiny_guest_image)
    body = f"name floor\ncpu 2\nsmp 2\nmem 128\npersistent true\nide:0:0 {drive}\nboot ide:0:0\n"
    server = (await create_server(client, auth, body))["server"]
    vm = qemu_driver(platform).vm(server)

    # Every vCPU thread, and only they, carry the quota; QEMU's main thread stays free.
    vcpus = set(await vm.vcpu_threads())
    assert len(vcpus) == 2 and vm.pid not in vcpus
    assert limited_threads(layout, server) == vcpus
    assert vm.pid in group_threads(layout, server)
    assert (
        read_cpu_quota(layout, server) == quota_us(2, core_mhz) == FLOOR_MHZ * 100_000 // core_mhz
    )

    # The guest boots on its vCPUs, which the quota holds back; the monitor still answers.
    deadline = time.monotonic() + 30
    while nr_throttled(layout, server) == 0:
        assert time.monotonic() < deadline, "the vCPUs were never held to their quota"
        await asyncio.sleep(0.2)
    started = time.monotonic()
    assert await vm.monitor.query_status() == "running"
    assert time.monotonic() - started < PROMPT

    # A live `set` of cpu changes the vCPUs' quota, and nothing else.
    started = time.monotonic()
    changed = await client.post(f"/servers/{server}/set", data=f"cpu {FLOOR_MHZ + 100}",
                                headers=auth)  # fmt: skip
    assert changed.status == 200, await changed.text()
    assert time.monotonic() - started < PROMPT
    assert read_cpu_quota(layout, server) == quota_us(FLOOR_MHZ + 100, core_mhz)
    assert limited_threads(layout, server) == vcpus

    started = time.monotonic()
    reset = await client.post(f"/servers/{server}/reset", headers=auth)
    assert reset.status == 204, await reset.text()
    assert time.monotonic() - started < PROMPT

    # A daemon restart re-places an adopted VM, also one an older daemon placed whole
    # (the process in the server's group, the quota on that group).
    (layout.group_of(server) / "cgroup.procs").write_text(str(vm.pid))
    if layout.version == 1:
        quota = str(quota_us(FLOOR_MHZ + 100, core_mhz))
        (layout.group_of(server) / "cpu.cfs_quota_us").write_text(quota)
    assert limited_threads(layout, server) == set()
    await lifecycle.close()
    await lifecycle.recover()
    adopted = qemu_driver(platform).vm(server)
    assert adopted.pid == vm.pid
    assert limited_threads(layout, server) == vcpus
    assert read_cpu_quota(layout, server) == quota_us(FLOOR_MHZ + 100, core_mhz)
    if layout.version == 1:
        assert (layout.group_of(server) / "cpu.cfs_quota_us").read_text().strip() == "-1"

    started = time.monotonic()
    destroyed = await client.post(f"/servers/{server}/destroy", headers=auth)
    assert destroyed.status == 204, await destroyed.text()
    assert time.monotonic() - started < PROMPT
    assert server not in lifecycle.active
    assert not layout.group_of(server).exists()  # its groups went with it

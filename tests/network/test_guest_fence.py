"""The guest fence applied by real `nft` in a network namespace each test creates and deletes:
server starts that ask for it at once share a run, and none returns on a run that began
before it asked (the fence may have been taken down meanwhile). A server without NICs does
not ask for it (on the host's own nftables: nothing is made there)."""

import asyncio
import subprocess
from pathlib import Path

from openhosting.network.guest_fence import GuestFence, table_name
from openhosting.network.pool import AddressPool
from openhosting.network.user_mode import UserNetwork
from tests.integration.netns_helpers import network_namespace

TABLE = "openhosting_guests_test"
UID = 65534
STARTS = 16
POOL = AddressPool.parse("192.0.2.0/24", "192.0.2.1", "192.0.2.1", "192.0.2.10-192.0.2.20")


class CountedFence(GuestFence):
    """The real fence, counting its `nft` runs; a run can be held at its start."""

    def __init__(self, namespace: str) -> None:
        super().__init__(TABLE, namespace)
        self.runs = 0
        self.hold: asyncio.Event | None = None
        self.running = asyncio.Event()

    async def _nft(self, *args: str, stdin: str | None = None) -> str:
        self.runs += 1
        self.running.set()
        if self.hold is not None:
            await self.hold.wait()
        return await super()._nft(*args, stdin=stdin)


def fence_rules(namespace: str) -> str:
    argv = ["ip", "netns", "exec", namespace, "nft", "list", "table", "inet", TABLE]
    return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout


def test_starts_at_once_share_one_application_of_the_fence() -> None:
    with network_namespace() as namespace:
        fence = CountedFence(namespace)

        async def starts() -> None:
            await asyncio.gather(*(fence.ensure(UID) for _ in range(STARTS)))

        asyncio.run(starts())
        # Was one run each, one after another behind the fence's lock: 16 × ~50 ms here.
        assert fence.runs == 1
        assert f"meta skuid {UID}" in fence_rules(namespace)


def test_a_caller_arriving_during_a_run_waits_for_a_run_of_its_own() -> None:
    with network_namespace() as namespace:
        fence = CountedFence(namespace)

        async def scenario() -> None:
            fence.hold = asyncio.Event()
            first = asyncio.create_task(fence.ensure(UID))
            await fence.running.wait()  # the first run has begun: it may miss what follows
            subprocess.run(
                ["ip", "netns", "exec", namespace, "nft", "delete", "table", "inet", TABLE],
                capture_output=True, timeout=10, check=False,
            )  # fmt: skip
            second = asyncio.create_task(fence.ensure(UID))
            third = asyncio.create_task(fence.ensure(UID))
            await asyncio.sleep(0.05)
            assert not second.done()
            fence.hold.set()
            await asyncio.gather(first, second, third)

        asyncio.run(scenario())
        assert fence.runs == 2  # the first, then one shared by the two that came during it
        assert f"meta skuid {UID}" in fence_rules(namespace)


def test_a_caller_that_gives_up_does_not_cancel_the_run_of_the_others() -> None:
    with network_namespace() as namespace:
        fence = CountedFence(namespace)

        async def scenario() -> None:
            fence.hold = asyncio.Event()
            quitter = asyncio.create_task(fence.ensure(UID))
            stayer = asyncio.create_task(fence.ensure(UID))
            await fence.running.wait()
            quitter.cancel()
            fence.hold.set()
            await stayer

        asyncio.run(scenario())
        assert fence.runs == 1
        assert f"meta skuid {UID}" in fence_rules(namespace)


def test_a_server_without_nics_starts_without_touching_the_fence(tmp_path: Path) -> None:
    network = UserNetwork(POOL, tmp_path / "network")
    fence = f"table inet {table_name(tmp_path / 'network' / 'passt')}"

    async def attach() -> dict[int, object]:
        return dict(await network.attach([]))

    try:
        assert asyncio.run(attach()) == {}
        tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True,
                                timeout=10, check=True).stdout  # fmt: skip
        assert fence not in tables.splitlines()
    finally:
        asyncio.run(network.close(idle=True))

"""Running `nft` (network/nft.py) for real, in a network namespace each test creates and
deletes: deleting what is already gone is no error, any other failure is; so every owner of
tables takes them down twice without error, even when they were never made."""

import asyncio
import functools

import pytest

from openhosting.network.bridge_fence import BridgeFence
from openhosting.network.errors import NetworkError
from openhosting.network.guest_fence import GuestFence
from openhosting.network.nft import delete_if_present, run_nft
from openhosting.network.nic_firewall import NicFirewall
from openhosting.network.vnc_overlay import VncOverlay
from tests.integration.netns_helpers import network_namespace

TABLE = "openhosting_nft_test"
BRIDGE = "oh-nft-test"


def test_deleting_what_is_gone_is_no_error_and_other_failures_are_raised() -> None:
    with network_namespace() as namespace:
        nft = functools.partial(run_nft, namespace)

        async def scenario() -> None:
            await delete_if_present(nft, "table", "inet", TABLE)  # never made
            await nft("add", "table", "inet", TABLE)
            assert f"table inet {TABLE}" in (await nft("list", "tables")).splitlines()
            await delete_if_present(nft, "table", "inet", TABLE)
            assert f"table inet {TABLE}" not in (await nft("list", "tables")).splitlines()
            with pytest.raises(NetworkError, match="failed"):
                await delete_if_present(nft, "table", "no-such-family", TABLE)

        asyncio.run(scenario())


def test_every_owner_of_tables_takes_them_down_twice_even_if_never_made() -> None:
    with network_namespace() as namespace:

        async def scenario() -> None:
            overlay = VncOverlay(namespace, BRIDGE)
            await overlay.close("192.0.2.10")  # a guest it never opened
            for owner in (
                GuestFence(TABLE, namespace),
                BridgeFence(namespace, BRIDGE, "oh-t", "oh-v"),
                NicFirewall(namespace, BRIDGE),
                overlay,
            ):
                await owner.remove()
                await owner.remove()

        asyncio.run(scenario())
        assert asyncio.run(run_nft(namespace, "list", "tables")).strip() == ""

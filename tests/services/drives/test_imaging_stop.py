"""The imaging service stops whenever it is asked to, even as its claim loop is woken."""

import asyncio

import pytest

from openhosting.services.platform import Platform


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
async def test_a_stop_as_the_claim_loop_wakes_ends_it(platform: Platform, turns: int) -> None:
    """A job ending (or another node's NOTIFY) wakes the claim loop as the daemon stops: the
    loop's wait had its cancellation swallowed when its wake-up came in the same turn of the
    event loop (asyncio.wait_for before Python 3.12), and the stop then waited for ever (a
    test's teardown hung for minutes on PostgreSQL, where notifications wake it often)."""
    imaging = platform.imaging
    await imaging.start()
    await asyncio.sleep(0.05)  # the claim loop waits for a wake-up
    imaging.notified()  # how another node's NOTIFY wakes it, from the listening thread
    imaging._wakeup.set()
    for _ in range(turns):
        await asyncio.sleep(0)
    await asyncio.wait_for(imaging.stop(), 10)
    assert all(task.done() for task in imaging._background)

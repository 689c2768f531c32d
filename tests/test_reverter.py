"""The one undo idiom: undos run in reverse on failure or cancellation, never on success."""

import asyncio

import pytest

from openhosting.reverter import Reverter


def test_undos_run_in_reverse_order_when_a_step_fails() -> None:
    done: list[str] = []
    with pytest.raises(RuntimeError, match="third"), Reverter() as revert:
        revert.add(lambda: done.append("undo first"))
        revert.add(lambda: done.append("undo second"))
        raise RuntimeError("third step failed")
    assert done == ["undo second", "undo first"]


def test_nothing_is_undone_after_success() -> None:
    done: list[str] = []
    with Reverter() as revert:
        revert.add(lambda: done.append("undo"))
        revert.success()
    assert done == []


def test_leaving_without_success_undoes_loudly(caplog: pytest.LogCaptureFixture) -> None:
    done: list[str] = []
    with Reverter() as revert:
        revert.add(lambda: done.append("undo"))
    assert done == ["undo"]
    assert "event=reverter_left_open undos=1" in caplog.text


async def test_leaving_an_async_reverter_without_success_undoes_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    done: list[str] = []

    async def undo() -> None:
        done.append("undo")

    async with Reverter() as revert:
        revert.add(undo)
    assert done == ["undo"]
    assert "event=reverter_left_open undos=1" in caplog.text
    caplog.clear()
    async with Reverter() as revert:  # after success() or with nothing to undo: quiet
        revert.add(undo)
        revert.success()
    assert done == ["undo"] and "reverter_left_open" not in caplog.text


def test_a_failing_undo_does_not_stop_the_others_nor_hide_the_error() -> None:
    done: list[str] = []

    def broken() -> None:
        raise OSError("cannot undo")

    with pytest.raises(ValueError, match="original"), Reverter() as revert:
        revert.add(lambda: done.append("undo first"))
        revert.add(broken)
        raise ValueError("original")
    assert done == ["undo first"]


async def test_async_undos_are_awaited_on_cancellation() -> None:
    done: list[str] = []
    started = asyncio.Event()

    async def undo() -> None:
        await asyncio.sleep(0)
        done.append("async undo")

    async def action() -> None:
        async with Reverter() as revert:
            revert.add(undo)
            revert.add(lambda: done.append("sync undo"))
            started.set()
            await asyncio.sleep(60)
            revert.success()

    task = asyncio.create_task(action())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert done == ["sync undo", "async undo"]


def test_an_async_undo_in_sync_use_is_reported_not_silently_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def undo() -> None:
        pass

    with pytest.raises(RuntimeError), Reverter() as revert:
        revert.add(undo)
        raise RuntimeError("fail")
    assert "undo_failed" in caplog.text

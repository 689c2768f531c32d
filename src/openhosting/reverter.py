"""One undo idiom for every multi-step action (the pattern Incus calls a reverter).

A step that changes the world registers how to take it back; when a later step fails, the
undos run in reverse order and the error goes on. Once every step has succeeded, `success()`
drops them. Cancellation (`asyncio.CancelledError`, a client gone) counts as a failure: a
half-made object never outlives the request that made it.

    async with Reverter() as revert:
        make_file()
        revert.add(remove_file)
        await insert_row()
        revert.success()

An undo that itself fails is logged and the others still run: the original error is the
one the caller needs to see.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

Undo = Callable[[], Any] | Callable[[], Awaitable[Any]]


class Reverter:
    """Undo steps in reverse order unless `success()` was called; sync or async use."""

    def __init__(self) -> None:
        self._undos: list[Undo] = []

    def add(self, undo: Undo) -> None:
        """Register how to take back the step just done (a function with no arguments;
        use `functools.partial` or a lambda for arguments). Async functions are awaited."""
        self._undos.append(undo)

    def success(self) -> None:
        """Every step is done: nothing is undone at exit."""
        self._undos.clear()

    def fail(self) -> None:
        """Run the undos now (sync ones only: for code outside an event loop)."""
        undos, self._undos = self._undos, []
        for undo in reversed(undos):
            try:
                result = undo()
                if inspect.iscoroutine(result):
                    result.close()  # never awaited: close it rather than leak a warning
                    raise TypeError("an async undo needs `async with Reverter()`")
            except Exception:
                log.exception("event=undo_failed undo=%r", undo)

    async def fail_async(self) -> None:
        """Run the undos now, awaiting the async ones."""
        undos, self._undos = self._undos, []
        for undo in reversed(undos):
            try:
                result = undo()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("event=undo_failed undo=%r", undo)

    def _undoes_at_exit(self, failed: bool) -> bool:
        """Whether leaving the block undoes: after an error, or when left without success()
        nor an error, which is a bug in the caller (undone, loudly)."""
        if not failed and self._undos:
            log.error("event=reverter_left_open undos=%d", len(self._undos))
            return True
        return failed

    def __enter__(self) -> Reverter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._undoes_at_exit(kind is not None):
            self.fail()

    async def __aenter__(self) -> Reverter:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._undoes_at_exit(kind is not None):
            await self.fail_async()

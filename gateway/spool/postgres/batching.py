"""Group commit on PostgreSQL: many callers' writes of one kind in one statement.

A `Batcher` runs one task per kind of write. Whatever callers submitted while the previous statement was in
flight goes into the next one: one round trip, one commit and one WAL flush for all of them (each statement runs
outside an explicit transaction, so it is its own transaction; synchronous_commit is on, so it returns only after
the flush). Each caller hears its own result after that commit. One task per kind, not several: on the 2-core
bench machine with the database on it a second one halved the batches, and the database spent ~30 % more CPU
per message — a commit costs it ~250 µs whatever its size, a row ~80 µs (bench/intake.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from gateway.spool.base import SpoolError
from gateway.spool.postgres.connection import Health, is_unavailable, unavailable

Acquire = Callable[[], contextlib.AbstractAsyncContextManager[Any]]


class Op:
    """One caller's write; `future` gets its result."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()


OpT = TypeVar("OpT", bound=Op)


class Batcher(Generic[OpT]):
    name = "batch"

    def __init__(self, acquire: Acquire, health: Health, *, max_batch: int, window: float = 0.0):
        self._acquire = acquire
        self._health = health
        self._max_batch = max_batch
        self._window = window
        self._pending: deque[OpT] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy = False
        self.batches = 0
        self.ops = 0
        self._task = asyncio.create_task(self._run(), name=f"mailgw-spool-{self.name}")

    async def submit(self, op: OpT) -> Any:
        if self._task.done():
            raise SpoolError("spool is closed")
        self._pending.append(op)
        self._idle.clear()
        self._wake.set()
        # A cancelled caller does not cancel the write: its batch may already be on the wire.
        return await asyncio.shield(op.future)

    async def close(self) -> None:
        """Finish what was submitted, then stop."""
        while self._pending or self._busy:
            await self._idle.wait()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def _take(self) -> list[OpT]:
        batch: list[OpT] = []
        while self._pending and len(batch) < self._max_batch:
            batch.append(self._pending.popleft())
        return batch

    async def _commit(self, batch: list[OpT]) -> None:
        """Run the batch; resolve each op's future (or leave it for `_run` to fail)."""
        raise NotImplementedError

    async def _run(self) -> None:
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            if self._window:
                await asyncio.sleep(self._window)
            batch = self._take()
            self._busy = True
            try:
                await self._commit(batch)
                self._health.up()
                self.batches += 1
                self.ops += len(batch)
            except Exception as exc:
                failure: Exception = exc
                if is_unavailable(exc):
                    self._health.down(exc)
                    failure = unavailable(exc)
                for op in batch:
                    if not op.future.done():
                        op.future.set_exception(failure)
            except BaseException as exc:  # cancelled at close: nobody may be left waiting
                for op in batch:
                    if not op.future.done():
                        op.future.set_exception(RuntimeError(f"spool writer stopped: {exc!r}"))
                raise
            finally:
                self._busy = False
                if not self._pending:
                    self._idle.set()


async def each_alone(run: Callable[[list[Any]], Any], items: list[Any]) -> list[Any]:
    """After a batch statement failed for something in its data: each item on its own statement, so that only
    the bad ones fail. A database outage still fails the whole lot."""
    out: list[Any] = []
    for item in items:
        try:
            [one] = await run([item])
        except Exception as exc:
            if is_unavailable(exc):
                raise
            out.append(exc)
        else:
            out.append(one)
    return out

"""Waiting for a condition in a test: poll with a deadline far above what the condition needs. The deadline is a
liveness bound (the test fails instead of hanging), not a timing assertion: timings live in bench/."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


def _timed_out(what: str, timeout: float, details: Callable[[], str] | None) -> AssertionError:
    text = f"timed out after {timeout:g}s waiting for {what}"
    return AssertionError(f"{text}\n{details()[-4000:]}" if details is not None else text)


async def wait_until(predicate: Callable[[], Any], what: str = "condition", timeout: float = 20.0, *,
                     details: Callable[[], str] | None = None) -> Any:
    """Poll `predicate` (a plain function, or one returning an awaitable) until it returns something true, and
    return that. AssertionError after `timeout` seconds, with the tail of `details()` (a daemon's log) if given."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout, details)
        await asyncio.sleep(0.02)


def wait_until_sync(predicate: Callable[[], Any], what: str = "condition", timeout: float = 30.0, *,
                    details: Callable[[], str] | None = None, interval: float = 0.05) -> Any:
    """`wait_until` for tests without an event loop (a daemon in another process): sleeps between polls."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout, details)
        time.sleep(interval)

"""A listener watched for what must never happen: tracebacks, asyncio errors, tasks left pending, slots kept.

`run_on(loop, main)` runs an async test body on the event loop the daemon uses in production (uvloop) or on
asyncio's own; `watched()` starts a real listener on a real spool and collects every problem report.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.config import ListenerConfig
from gateway.intake.smtp import SmtpListener
from gateway.spool import SqliteSpool

OURS = "example.com"
LOOPS = ["asyncio", "uvloop"]


def run_on(loop: str, main: Callable[[], Awaitable[None]]) -> None:
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        uvloop.run(main())
    else:
        asyncio.run(main())


def rcpt_check(rcpt: str, sender: str, peer: str) -> str | None:
    if rcpt.lower().endswith("@" + OURS):
        return None if not rcpt.lower().startswith("unknown") else "550 5.1.1 No such recipient here"
    return "550 5.7.1 Relaying denied"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Watch:
    listener: SmtpListener
    spool: SqliteSpool
    events: list[dict[str, Any]]
    records: list[logging.LogRecord]
    loop_errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.listener.port)

    def problems(self) -> list[str]:
        """Tracebacks, asyncio errors (e.g. "Task was destroyed but it is pending!"), error-level events."""
        out = [f"asyncio: {c.get('message')} {c.get('exception')!r}" for c in self.loop_errors]
        out += [f"{r.name}: {r.getMessage()}" for r in self.records
                if r.exc_info or r.levelno >= logging.ERROR or "pending" in r.getMessage()]
        out += [f"structlog: {e}" for e in self.events if e.get("log_level") in ("error", "critical")
                or "exc_info" in e or "exception" in e]
        return out

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]


@asynccontextmanager
async def watched(tmp_path: Path, *, message_check: Any = None, **overrides: Any) -> AsyncIterator[Watch]:
    loop = asyncio.get_running_loop()
    records = _Records()
    root = logging.getLogger()
    root.addHandler(records)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    spool = await SqliteSpool.open(tmp_path / "spool.db")
    cfg = ListenerConfig.model_validate({"kind": "smtp", "bind": "127.0.0.1:0", **overrides})
    listener = SmtpListener(cfg, spool=spool, rcpt_check=rcpt_check, hostname="mx.test", message_check=message_check)
    watch: Watch | None = None
    try:
        with capture_logs() as events:
            watch = Watch(listener, spool, events, records.records)
            loop.set_exception_handler(lambda _loop, ctx: watch.loop_errors.append(ctx) if watch else None)
            await listener.start()
            try:
                yield watch
            finally:
                await listener.drain(2)
                await spool.close()
                gc.collect()  # a task dropped while pending is reported when it is collected
                await asyncio.sleep(0)
    finally:
        root.removeHandler(records)
        root.setLevel(old_level)

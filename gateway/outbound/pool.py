"""SMTP sessions kept open between messages to the same host, as Postfix's connection cache does.

Odoo submits one transaction per recipient; opening a connection (TCP, banner, EHLO, STARTTLS) for each of
them is what makes relays and the big providers answer "too many connections". A session that finished a
transaction goes back here; the next delivery to the same host and with the same TLS requirements takes it,
after an RSET that proves it is still alive. A session carries at most `max_messages` messages and lives at
most `max_age`; one left idle for `idle_timeout` is closed (QUIT).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import aiosmtplib

from gateway.config import SessionReuseConfig
from gateway.logs import get_logger

log = get_logger("mailgw.outbound")

RSET_TIMEOUT = 10.0
QUIT_TIMEOUT = 5.0


@dataclass(eq=False)
class SmtpSession:
    client: aiosmtplib.SMTP
    key: Hashable  # what must be equal for a session to be reused (address, port, TLS requirements)
    host: str  # the name of the host, for logs and TLS
    opened_at: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    tls: bool = False  # TLS is active
    verified: bool = False  # the certificate was checked against `host`
    messages: int = 0
    broken: bool = False  # the server closed, timed out, or the state is unknown: never reuse

    def supports(self, extension: str) -> bool:
        return bool(self.client.supports_extension(extension))


class SessionPool:
    def __init__(self, cfg: SessionReuseConfig, clock: Callable[[], float] = time.monotonic):
        self.cfg = cfg
        self.clock = clock
        self._idle: dict[Hashable, list[SmtpSession]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._janitor: asyncio.Task[None] | None = None
        self.opened = 0  # sessions opened (counted by the caller through `opened_one`)
        self.reused = 0

    def opened_one(self) -> None:
        self.opened += 1

    def _usable(self, session: SmtpSession, now: float) -> bool:
        return (not session.broken and session.client.is_connected
                and session.messages < self.cfg.max_messages
                and now - session.opened_at < self.cfg.max_age
                and now - session.last_used < self.cfg.idle_timeout)

    async def take(self, key: Hashable) -> SmtpSession | None:
        """An idle session for `key` that answered RSET, or None."""
        idle = self._idle.get(key)
        while idle:
            session = idle.pop()
            if not self._usable(session, self.clock()):
                self._close_later(session)
                continue
            try:
                await session.client.rset(timeout=RSET_TIMEOUT)
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                session.broken = True
                self._close_later(session)
                continue
            self.reused += 1
            return session
        return None

    def give_back(self, session: SmtpSession) -> None:
        """After a delivery: keep it for the next one, or close it (broken, or past its caps)."""
        now = self.clock()
        session.last_used = now
        if not self._usable(session, now):
            self._close_later(session)
            return
        self._idle.setdefault(session.key, []).append(session)
        if self._janitor is None or self._janitor.done():
            self._janitor = asyncio.create_task(self._sweep())

    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())

    async def _sweep(self) -> None:
        """Close sessions idle for longer than `idle_timeout`, until none is left."""
        while self._idle:
            await asyncio.sleep(max(0.05, self.cfg.idle_timeout / 2))
            now = self.clock()
            for key, sessions in list(self._idle.items()):
                keep = [s for s in sessions if self._usable(s, now)]
                for s in sessions:
                    if s not in keep:
                        self._close_later(s)
                if keep:
                    self._idle[key] = keep
                else:
                    del self._idle[key]

    def _close_later(self, session: SmtpSession) -> None:
        task = asyncio.create_task(close_session(session))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        if self._janitor is not None:
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._janitor
        sessions = [s for v in self._idle.values() for s in v]
        self._idle.clear()
        await asyncio.gather(*(close_session(s) for s in sessions), *self._closing, return_exceptions=True)


async def close_session(session: SmtpSession) -> None:
    """QUIT politely when the session is in a known state, else just drop the connection."""
    client = session.client
    if not client.is_connected:
        return
    if not session.broken:
        try:
            await client.quit(timeout=QUIT_TIMEOUT)
            return
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            pass
    client.close()

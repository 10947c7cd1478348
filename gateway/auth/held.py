"""Held mail (spool state `held`): released by an operator, or deleted once `auth.held_lifetime` has passed.

Expiry is never silent: each deleted message gets a warning line (`auth.held_expired`) with its sender, its
Message-Id and why it was held. The delete is conditional on the entry still being held, so a message an
operator releases at that moment is delivered, not deleted.
"""

from __future__ import annotations

import asyncio
import time

from gateway.logs import get_logger
from gateway.spool.base import AUTH_STATUS_KEY, Direction, InvalidTransition, Spool, SpoolEntry, State, UnknownEntry

log = get_logger("mailgw.auth")


async def release(spool: Spool, queue_id: str, *, by: str = "operator") -> SpoolEntry:
    """held -> received, due now, marked so that the worker delivers it as if it had passed."""
    entry = await spool.get(queue_id)
    if entry is None:
        raise UnknownEntry(queue_id)
    if entry.state != State.HELD:
        raise InvalidTransition(f"{queue_id} is {entry.state}, not held")
    status = {**(entry.rcpt_status or {}),
              AUTH_STATUS_KEY: {"state": "released", "at": time.time(), "detail": f"released by {by}; "
                                f"was: {entry.last_error or 'held'}"}}
    new = await spool.transition(queue_id, State.RECEIVED, rcpt_status=status, next_attempt_at=time.time())
    log.info("auth.released", queue_id=queue_id, message_id=entry.message_id, by=by)
    return new


class HeldExpiry:
    """A daemon service: every `interval`, delete held mail older than `lifetime` (logged one by one)."""

    def __init__(self, spool: Spool, lifetime: float, *, interval: float | None = None):
        self.spool = spool
        self.lifetime = lifetime
        self.interval = interval if interval is not None else min(3600.0, max(1.0, lifetime / 24))
        self._stop = asyncio.Event()

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.sweep()
            except Exception as exc:  # a spool hiccup: try again next round
                log.error("auth.expiry_failed", error=str(exc))
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        self._stop.set()

    async def sweep(self, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        expired = []
        for entry in await self.spool.list(state=State.HELD, direction=Direction.INBOUND, limit=1000):
            held_for = now - entry.updated_at
            if held_for < self.lifetime:
                continue
            try:
                await self.spool.delete(entry.queue_id, only_in=State.HELD)
            except (InvalidTransition, UnknownEntry):
                continue  # released or deleted meanwhile
            expired.append(entry.queue_id)
            log.warning("auth.held_expired", queue_id=entry.queue_id, message_id=entry.message_id,
                        sender=entry.envelope.mail_from, recipients=list(entry.envelope.rcpt_tos),
                        held_days=round(held_for / 86400, 1), reason=entry.last_error)
        return expired

"""What one gateway process has claimed in the shared queue, and keeping those claims alive.

`held`: the entries this process works on, each with the token of its claim (`<process>.<n>`: one process can
claim an entry again after its lease ran out, and a write meant for the old claim must not hit the new one); a
background task renews their leases every quarter lease. `abandoned`: claims the worker is done with but could
not say so (the write failed: database away, timeout); they are no longer renewed and are released as soon as
the database answers, so nothing stays claimed forever. `raws`: the bytes of small messages read with the claim,
handed out once by `PostgresSpool.raw`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from gateway.logs import get_logger
from gateway.spool.base import SpoolError
from gateway.spool.postgres.sql import CLEAR_CLAIM, renew_sql

log = get_logger("mailgw.spool")

Fetch = Callable[..., Awaitable[list[Any]]]


class Leases:
    def __init__(self, fetch: Fetch, schema: str, lease: float):
        self._fetch = fetch
        self._lease = lease
        self._renew_sql = renew_sql(schema)
        self._release_sql = (f"UPDATE {schema}.entries e SET {CLEAR_CLAIM} FROM unnest($1::text[], $2::text[]) "
                             "AS c(queue_id, token) WHERE e.queue_id = c.queue_id AND e.claim_token = c.token")
        self.held: dict[str, str] = {}
        self.abandoned: dict[str, str] = {}
        self.raws: dict[str, bytes] = {}

    def took(self, queue_id: str, token: str, raw: bytes | None) -> bool:
        """A claim came back; True when this process was already working on the entry (its lease ran out during a
        database outage and the claim took it again): the worker has it, it must not get it twice."""
        if raw is not None:
            self.raws[queue_id] = raw
        working = queue_id in self.held
        self.held[queue_id] = token
        self.abandoned.pop(queue_id, None)
        return working

    def forget(self, queue_id: str) -> str | None:
        """This process no longer works on the entry: no renewal, no read-ahead. Returns the claim it had."""
        self.raws.pop(queue_id, None)
        return self.held.pop(queue_id, None)

    def abandon(self, queue_id: str) -> None:
        """The worker is done with this claim but could not say so: stop renewing it, release it later."""
        token = self.forget(queue_id)
        if token is not None:
            self.abandoned[queue_id] = token

    async def release(self, claims: Mapping[str, str]) -> None:
        """Release these claims (queue id -> claim token): only where the claim is still that one."""
        if not claims:
            return
        await self._fetch(self._release_sql, list(claims), list(claims.values()))
        for queue_id, token in claims.items():
            if self.held.get(queue_id) == token:
                self.forget(queue_id)
            if self.abandoned.get(queue_id) == token:
                del self.abandoned[queue_id]

    async def renew(self) -> None:
        """Extend the lease of every claim held; release the ones given up."""
        held = dict(self.held)
        await self.release(dict(self.abandoned))
        if not held:
            return
        # The claims not renewed, as they were when the statement began: still ours (a transition of ours committed
        # while it ran, and will forget the claim itself), released (forget it), or another gateway's (our lease
        # ran out and it took the entry: say so).
        rows = await self._fetch(self._renew_sql, list(held), list(held.values()), self._lease)
        for queue_id, token, claimed_by in rows:
            if token == held[queue_id] or self.held.get(queue_id) != held[queue_id]:
                continue
            self.forget(queue_id)
            if token is not None:
                log.warning("spool.lease_lost", queue_id=queue_id, now_claimed_by=claimed_by)

    async def keep(self) -> None:
        """Renew every quarter lease until cancelled (a daemon's spool runs this as a task)."""
        while True:
            await asyncio.sleep(max(0.2, self._lease / 4))
            with contextlib.suppress(SpoolError):  # the database is away: logged once by the spool
                await self.renew()

"""The one connection of a gateway that has to stay the same database session: it LISTENs for new mail, and
holds the session-level advisory locks — the instance name (so a restarted gateway may safely take back what
its dead predecessor had claimed) and one per mailbox being polled (so exactly one gateway polls it).

When the session ends (the database restarted, the network broke, the gateway died), PostgreSQL releases its
locks; a peer's next `pg_try_advisory_lock` gets the mailbox. On our side every lock held on that session is
reported lost at once (the poller stops), and the connection is re-established in the background. A liveness
query every few seconds notices a connection that hangs rather than breaks, before the server's TCP
keepalive (gateway/spool/postgres/connection.py) frees the locks for the peers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from gateway.logs import get_logger
from gateway.spool.base import SpoolError
from gateway.spool.postgres.connection import connect, is_unavailable
from gateway.spool.postgres.schema import channel_name, lock_key

log = get_logger("mailgw.spool")

CHECK_INTERVAL = 5.0  # seconds between liveness queries, and the timeout of each


class InstanceNameInUse(SpoolError):
    pass


class PgMailboxLock:
    """gateway.spool.base.MailboxLock on the control session."""

    def __init__(self, control: Control, name: str):
        self.control = control
        self.name = name
        self.key = lock_key(control.schema, "mailbox", name)
        self.lost = asyncio.Event()
        self.held = False

    async def acquire(self) -> bool:
        if self.held and not self.lost.is_set():
            return True
        self.held = await self.control.try_lock(self)
        if self.held:
            self.lost.clear()
        return self.held

    async def release(self) -> None:
        if self.held:
            self.held = False
            await self.control.unlock(self)


class Control:
    def __init__(self, dsn: str, *, schema: str, instance: str, connect_timeout: float, statement_timeout: float,
                 on_notify: Callable[[str], None], check_interval: float = CHECK_INTERVAL):
        self.schema = schema
        self.instance = instance
        self._dsn = dsn
        self._timeouts = {"connect_timeout": connect_timeout, "statement_timeout": statement_timeout}
        self._on_notify = on_notify
        self._check_interval = check_interval
        self._channel = channel_name(schema)
        self._instance_key = lock_key(schema, "instance", instance)
        self._conn: Any = None
        self._use = asyncio.Lock()  # one statement at a time on the session
        self._held: dict[int, PgMailboxLock] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.instance_locked = False

    async def start(self) -> None:
        """Connect, LISTEN and take the instance name; raises InstanceNameInUse if a live gateway has it."""
        await self._connect(first=True)
        self._task = asyncio.create_task(self._supervise(), name="mailgw-spool-control")

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        conn, self._conn = self._conn, None
        self._lose_all()
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)  # ends the session: every lock is released

    # -- locks --------------------------------------------------------------------------------------------

    def mailbox_lock(self, name: str) -> PgMailboxLock:
        return PgMailboxLock(self, name)

    async def try_lock(self, lock: PgMailboxLock) -> bool:
        conn = self._conn
        if conn is None:
            return False
        try:
            async with self._use:
                got = await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock.key, timeout=self._check_interval)
        except Exception as exc:
            self._broken(conn, exc)
            return False
        if got and conn is self._conn:
            self._held[lock.key] = lock
            return True
        return False

    async def unlock(self, lock: PgMailboxLock) -> None:
        if self._held.pop(lock.key, None) is None:
            return
        conn = self._conn
        if conn is None:
            return
        try:
            async with self._use:
                await conn.fetchval("SELECT pg_advisory_unlock($1)", lock.key, timeout=self._check_interval)
        except Exception as exc:
            self._broken(conn, exc)

    # -- the session --------------------------------------------------------------------------------------

    async def _connect(self, *, first: bool = False) -> None:
        conn = await connect(self._dsn, **self._timeouts)
        try:
            conn.add_termination_listener(self._terminated)
            await conn.add_listener(self._channel, self._notified)
            self.instance_locked = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._instance_key))
        except BaseException:
            conn.terminate()
            raise
        if not self.instance_locked:
            if first:
                conn.terminate()
                raise InstanceNameInUse(
                    f"another live gateway on this spool calls itself {self.instance!r}: give each gateway its "
                    "own spool.instance")
            log.error("spool.instance_name_in_use", instance=self.instance)
        self._conn = conn

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self._on_notify(payload)

    def _terminated(self, conn: Any) -> None:
        if conn is self._conn:
            self._conn = None
            self._lose_all()
            if not self._closing:
                log.warning("spool.control_lost")
            self._wake.set()

    def _broken(self, conn: Any, exc: BaseException) -> None:
        if not is_unavailable(exc) and not isinstance(exc, asyncio.TimeoutError):
            log.error("spool.control_error", error=repr(exc))
        if conn is self._conn:
            self._conn = None
            self._lose_all()
            self._wake.set()
        conn.terminate()

    def _lose_all(self) -> None:
        held, self._held = self._held, {}
        for lock in held.values():
            lock.held = False
            lock.lost.set()
        if held:
            log.warning("spool.mailbox_locks_lost", mailboxes=sorted(lock.name for lock in held.values()))

    async def _supervise(self) -> None:
        delay = 0.5
        while not self._closing:
            if self._conn is None:
                try:
                    await self._connect()
                except Exception as exc:
                    log.debug("spool.control_reconnect_failed", error=str(exc), retry_in=delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    continue
                delay = 0.5
                log.info("spool.control_reconnected", instance_locked=self.instance_locked)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._check_interval)
            conn = self._conn
            if conn is None or self._closing:
                continue
            try:
                async with self._use:
                    if not self.instance_locked:
                        self.instance_locked = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)",
                                                                        self._instance_key))
                    await conn.fetchval("SELECT 1", timeout=self._check_interval)
            except Exception as exc:
                self._broken(conn, exc)

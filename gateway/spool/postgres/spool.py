"""PostgresSpool: the Spool interface on PostgreSQL, for several gateways sharing one queue (docs/scale-out.md).

Every operation is one statement in its own transaction (no BEGIN/COMMIT round trips); puts of concurrent
sessions are grouped into one statement (writer.py). What several gateways need beyond SQLite:

- Claims are leases. `claim` takes due entries with FOR UPDATE SKIP LOCKED (two gateways never get the same
  one, nobody waits), and stamps them with this process's token and `lease_expires_at` in database time. A
  background task renews the leases of the entries this process still holds; a claim whose lease ran out (its
  gateway died, hung, or lost the database for longer than the lease) is claimable by anyone, counted as a
  crash: the poison guard works across gateways.
- Writes by a claim holder are fenced: a transition or release of an entry this process claimed only happens
  while the claim is still its own (else LeaseLost), so a gateway that lost its lease cannot undo the work of
  the one that took it over.
- A write whose outcome is unknown (the database went away) makes this process give the entry up: it stops
  renewing that lease and releases it once the database answers again, so nothing stays claimed forever.
- New mail wakes every gateway's idle workers by NOTIFY (a trigger, schema.py); the mailbox locks and the
  instance name live on the control session (control.py).

The claims this process holds are kept in leases.py, the longer statements in sql.py, the grouped writes in
writer.py (on batching.py), the schema and its migrations in schema.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import asyncpg

from gateway.logs import get_logger
from gateway.spool.base import (
    DEFERRABLE,
    ENTRY_COLUMNS,
    EXPORT_COLUMNS,
    PARKED,
    TRANSITIONS,
    Direction,
    ExportRow,
    InvalidTransition,
    LeaseLost,
    MailboxLock,
    PutItem,
    RecoveryReport,
    Spool,
    SpoolEntry,
    SpoolError,
    State,
    UnknownEntry,
    by_message_id,
    dumps,
    entry_from_row,
    log_deferred,
    log_puts,
    log_transition,
    parked_reason,
    put_row,
    requeue_target,
)
from gateway.spool.postgres.connection import (
    Health,
    checked_out,
    connect_kwargs,
    describe_dsn,
    is_unavailable,
    unavailable,
)
from gateway.spool.postgres.control import Control
from gateway.spool.postgres.leases import Leases
from gateway.spool.postgres.schema import channel_name, migrate
from gateway.spool.postgres.sql import CLEAR_CLAIM, Statements, cols, import_values
from gateway.spool.postgres.writer import PutOp, PutWriter, TransitionOp, TransitionWriter

log = get_logger("mailgw.spool")

class PostgresSpool(Spool):
    """Create with `await PostgresSpool.open(dsn, ...)`; `instance=True` for a daemon (leases, LISTEN, locks)."""

    def __init__(self, pool: Any, *, dsn: str, schema: str, instance: str, lease: float, max_batch: int,
                 commit_window: float, crash_limit: int, acquire_timeout: float):
        self._pool = pool
        self._dsn = dsn
        self.schema = schema
        self.instance = instance
        self.location = f"{describe_dsn(dsn)} (schema {schema})"
        # Claim tokens are "<process>.<n>": the process part tells this process's claims from a predecessor's,
        # the number one claim from the next of the same entry (a write meant for an old claim never hits a new one).
        self._token = secrets.token_hex(8)
        self._claims = itertools.count(1)
        self._lease = lease
        self.crash_limit = crash_limit
        self._acquire_timeout = acquire_timeout
        self._health = Health()
        self._writer = PutWriter(self._acquire, schema, self._health, max_batch=max_batch, window=commit_window)
        self._transitions = TransitionWriter(self._acquire, schema, self._health, own_prefix=f"{self._token}.")
        self._leases = Leases(self._fetch, schema, lease)  # what this process claimed (leases.py)
        self._listeners: list[Callable[[Direction], None]] = []
        self._control: Control | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._closed = False
        self._sql = Statements(schema)
        self.migrated: tuple[int, int] = (0, 0)  # schema version before and after open

    @classmethod
    async def open(cls, dsn: str, *, schema: str = "mailgw", instance: str | None = None, daemon: bool = False,
                   lease: float = 30.0, pool_size: int = 10, connect_timeout: float = 5.0,
                   statement_timeout: float = 30.0, max_batch: int = 256, commit_window: float = 0.0,
                   crash_limit: int = 3) -> PostgresSpool:
        """Connect, bring the schema up to date, and with `daemon` start the instance machinery: the control
        session (instance name lock, LISTEN, mailbox locks) and lease renewal. Raises SpoolUnavailable when the
        database cannot be reached."""
        from gateway.host import default_hostname

        kwargs = connect_kwargs(dsn, connect_timeout=connect_timeout, statement_timeout=statement_timeout)
        try:
            # min_size 0: no background reconnect loop of its own (it logs a traceback per try during an outage).
            pool = await asyncpg.create_pool(min_size=0, max_size=pool_size, **kwargs)
        except Exception as exc:
            if is_unavailable(exc):
                raise unavailable(exc) from exc
            raise SpoolError(f"cannot open the spool database: {exc}") from exc
        spool = cls(pool, dsn=dsn, schema=schema, instance=instance or default_hostname(), lease=lease,
                    max_batch=max_batch, commit_window=commit_window, crash_limit=crash_limit,
                    acquire_timeout=connect_timeout + statement_timeout)
        try:
            async with spool._conn() as conn:
                spool.migrated = await migrate(conn, schema)
            if daemon:
                spool._control = Control(dsn, schema=schema, instance=spool.instance, connect_timeout=connect_timeout,
                                         statement_timeout=statement_timeout, on_notify=spool._notified)
                await spool._control.start()
                spool._renewer = asyncio.create_task(spool._leases.keep(), name="mailgw-spool-leases")
        except BaseException as exc:
            await spool.close()
            if isinstance(exc, SpoolError) or not isinstance(exc, Exception):
                raise
            if is_unavailable(exc):
                raise unavailable(exc) from exc
            # A wrong password, a database that does not exist, no right to create the schema: the operator's.
            raise SpoolError(f"cannot open the spool database {describe_dsn(dsn)}: {exc}") from exc
        return spool

    # -- plumbing ---------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolError("spool is closed")

    def _acquire(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return self._pool.acquire(timeout=self._acquire_timeout)

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[Any]:
        """A pooled connection; database outages come out as SpoolUnavailable (and are logged once)."""
        self._check_open()
        try:
            async with checked_out(self._acquire) as conn:
                yield conn
        except Exception as exc:
            if is_unavailable(exc):
                self._health.down(exc)
                raise unavailable(exc) from exc
            raise
        self._health.up()

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        async with self._conn() as conn:
            return list(await conn.fetch(sql, *args))

    async def _fetchrow(self, sql: str, *args: Any) -> Any:
        async with self._conn() as conn:
            return await conn.fetchrow(sql, *args)

    @property
    def stats(self) -> dict[str, int]:
        return {"commit_batches": self._writer.batches, "commit_ops": self._writer.ops,
                "transition_batches": self._transitions.batches, "transition_ops": self._transitions.ops}

    @property
    def available(self) -> bool:
        return self._health.down_since is None

    def add_listener(self, callback: Callable[[Direction], None]) -> None:
        self._listeners.append(callback)

    def _notified(self, payload: str) -> None:
        try:
            direction = Direction(payload)
        except ValueError:
            return
        for callback in self._listeners:
            callback(direction)

    def mailbox_lock(self, name: str) -> MailboxLock:
        if self._control is None:
            raise SpoolError("mailbox locks need the spool opened for a daemon")
        return self._control.mailbox_lock(name)

    async def schema_version(self) -> int:
        from gateway.spool.postgres.schema import current_version

        async with self._conn() as conn:
            return await current_version(conn, self.schema)

    # -- writes -----------------------------------------------------------------------------------------

    async def put_many(self, items: Sequence[PutItem]) -> list[tuple[str, bool] | BaseException]:
        self._check_open()
        rows = [put_row(item) for item in items]
        results: list[tuple[str, bool] | BaseException] = await self._writer.submit(PutOp(rows))
        log_puts(items, rows, results)
        return results

    async def claim(self, direction: Direction, worker: str, *, limit: int, now: float | None = None
                    ) -> list[SpoolEntry]:
        at = time.time() if now is None else now
        token = f"{self._token}.{next(self._claims)}"
        rows = await self._fetch(self._sql.claim[direction], at, limit, f"{worker}@{self.instance}", self.instance,
                                 token, self._lease, f"{self._token}.")
        n = len(ENTRY_COLUMNS)
        entries: list[SpoolEntry] = []
        parked: list[SpoolEntry] = []
        for row in rows:
            entry = entry_from_row(tuple(row)[:n])
            if self._leases.took(entry.queue_id, token, bytes(row["raw"]) if row["raw"] is not None else None):
                continue  # its lease ran out during a database outage, but our worker still has it: not twice
            if row["taken_over"]:
                log.warning("spool.taken_over", queue_id=entry.queue_id, message_id=entry.message_id,
                            previous=row["previous"], crashes=entry.crashes)
                if entry.crashes >= self.crash_limit:
                    parked.append(entry)
                    continue
            entries.append(entry)
        if parked:
            await self._park(parked)
        entries.sort(key=lambda e: (e.envelope.received_at, e.queue_id))
        return entries

    async def _park(self, entries: Sequence[SpoolEntry]) -> None:
        """The poison guard: entries whose holder died `crash_limit` times are parked for an operator."""
        now = time.time()
        async with self._conn() as conn:
            await conn.executemany(
                f"UPDATE {self.schema}.entries SET state = $2, updated_at = $3, last_error = $4, {CLEAR_CLAIM} "
                "WHERE queue_id = $1 AND claim_token = $5",
                [(e.queue_id, str(PARKED[e.direction]), now, parked_reason(e.crashes, str(e.state)),
                  self._leases.held.get(e.queue_id)) for e in entries])
        for e in entries:
            self._leases.forget(e.queue_id)
        log.warning("spool.recovered", released=0, parked=[e.queue_id for e in entries])

    async def transition(
        self,
        queue_id: str,
        to: State,
        *,
        error: str | None = None,
        next_attempt_at: float | None = None,
        route: Any = None,
        rcpt_status: Mapping[str, Any] | None = None,
        count_attempt: bool = False,
        release: bool = True,
        reset_crashes: bool = False,
    ) -> SpoolEntry:
        self._check_open()
        mine = self._leases.held.get(queue_id)
        now = time.time()
        op = TransitionOp((queue_id, str(to), error, now if next_attempt_at is None else next_attempt_at,
                           dumps(route), dumps(rcpt_status), int(count_attempt), reset_crashes, release, mine))
        try:
            row = await self._transitions.submit(op)
        except SpoolError:
            if mine and release:
                self._leases.abandon(queue_id)
            raise
        if row is None:
            raise UnknownEntry(queue_id)
        direction, current = Direction(row["cur_direction"]), State(row["cur_state"])
        if row["queue_id"] is None:
            if to not in TRANSITIONS[direction][current]:
                raise InvalidTransition(f"{queue_id}: {current} -> {to} is not allowed for {direction} mail")
            self._leases.forget(queue_id)
            if mine:
                raise LeaseLost(f"{queue_id}: this gateway's claim expired and was taken over; not changed")
            raise LeaseLost(f"{queue_id}: being worked on by {row['cur_claimed_by']}; not changed")
        if release:
            self._leases.forget(queue_id)
        entry = entry_from_row(tuple(row)[4:])
        log_transition(queue_id, current, to, entry, error)
        return entry

    async def defer_many(self, queue_ids: Sequence[str], *, next_attempt_at: float, error: str) -> list[str]:
        if not queue_ids:
            return []
        ids = list(queue_ids)
        try:
            rows = await self._fetch(
                f"UPDATE {self.schema}.entries SET state = $1, updated_at = $2, last_error = $3, "
                f"next_attempt_at = $4, {CLEAR_CLAIM} WHERE direction = 'inbound' AND state = ANY($5::text[]) "
                "AND queue_id = ANY($6::text[]) "
                "AND (claim_token IS NULL OR starts_with(claim_token, $7) OR lease_expires_at < now()) "
                "RETURNING queue_id",
                str(State.DEFERRED), time.time(), error, next_attempt_at, list(DEFERRABLE), ids, f"{self._token}.")
        except SpoolError:
            for queue_id in ids:
                self._leases.abandon(queue_id)
            raise
        moved = [r["queue_id"] for r in rows]
        for queue_id in moved:
            self._leases.forget(queue_id)
        log_deferred(moved, error)
        for queue_id in set(ids) - set(moved):
            self._leases.abandon(queue_id)  # not deferrable: do not keep it claimed
        return moved

    async def release(self, queue_id: str) -> None:
        token = self._leases.held.get(queue_id)
        if token is None:
            return  # not (or no longer) this process's claim
        try:
            await self._leases.release({queue_id: token})
        except SpoolError:
            self._leases.abandon(queue_id)
            raise

    async def renew_leases(self) -> None:
        """Extend the leases of every claim this process holds; release the ones it gave up (also done every
        quarter lease by a daemon's spool)."""
        await self._leases.renew()

    async def delete(self, queue_id: str, *, only_in: State | None = None) -> None:
        s = self.schema
        # One statement: with `only_in`, the entry cannot change state between the check and the delete.
        row = await self._fetchrow(
            f"WITH d AS (DELETE FROM {s}.entries WHERE queue_id = $1 AND ($2::text IS NULL OR state = $2) "
            f"RETURNING queue_id), m AS (DELETE FROM {s}.messages WHERE queue_id IN (SELECT queue_id FROM d)) "
            f"SELECT (SELECT count(*) FROM d) AS deleted, "
            f"EXISTS (SELECT 1 FROM {s}.entries WHERE queue_id = $1) AS exists",
            queue_id, str(only_in) if only_in is not None else None)
        if not row["deleted"]:
            if only_in is not None and row["exists"]:
                raise InvalidTransition(f"{queue_id} is no longer {only_in}")
            raise UnknownEntry(queue_id)
        self._leases.forget(queue_id)
        log.info("spool.deleted", queue_id=queue_id)

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        async with self._conn() as conn:
            return await conn.fetchval(sql, *args)

    async def requeue(self, queue_id: str) -> SpoolEntry:
        """Operator retry: failed/exception/cancel -> received/outgoing, due now, crash counter cleared."""
        entry, target = await requeue_target(self, queue_id)
        if target is None:
            return entry
        new = await self.transition(queue_id, target, error=None, next_attempt_at=time.time(), reset_crashes=True)
        # Wake the workers of every gateway (inserts notify by trigger; this is an update).
        await self._fetchval("SELECT pg_notify($1, $2)", channel_name(self.schema), str(entry.direction))
        return new

    async def wake(self, queue_ids: Sequence[str], now: float | None = None) -> int:
        if not queue_ids:
            return 0
        at = time.time() if now is None else now
        rows = await self._fetch(f"UPDATE {self.schema}.entries SET next_attempt_at = $1 WHERE next_attempt_at > $1 "
                                 "AND queue_id = ANY($2::text[]) RETURNING 1", at, list(queue_ids))
        return len(rows)

    async def recover(self, crash_limit: int = 3) -> RecoveryReport:
        """At start-up: claims of this gateway's dead predecessor (same instance name, another process) are
        released, each counted as a crash; at `crash_limit` the entry is parked. Claims of other gateways are
        theirs: they are taken over only when their lease runs out (see claim)."""
        self.crash_limit = crash_limit
        if self._control is None or not self._control.instance_locked:
            raise SpoolError("recover() needs the spool opened for a daemon that holds its instance name")
        s = self.schema
        released: list[str] = []
        parked: list[str] = []
        now = time.time()
        async with self._conn() as conn, conn.transaction():
            rows = await conn.fetch(f"SELECT queue_id, direction, state, crashes FROM {s}.entries "
                                    "WHERE claim_instance = $1 AND NOT starts_with(claim_token, $2) FOR UPDATE",
                                    self.instance, f"{self._token}.")
            for queue_id, direction, state, crashes in rows:
                crashes += 1
                if crashes >= crash_limit:
                    await conn.execute(f"UPDATE {s}.entries SET state = $2, crashes = $3, updated_at = $4, "
                                       f"last_error = $5, {CLEAR_CLAIM} WHERE queue_id = $1", queue_id,
                                       str(PARKED[Direction(direction)]), crashes, now, parked_reason(crashes, state))
                    parked.append(queue_id)
                else:
                    await conn.execute(f"UPDATE {s}.entries SET crashes = $2, {CLEAR_CLAIM} WHERE queue_id = $1",
                                       queue_id, crashes)
                    released.append(queue_id)
        report = RecoveryReport(tuple(released), tuple(parked))
        report.log()
        return report

    # -- reads ------------------------------------------------------------------------------------------

    async def get(self, queue_id: str) -> SpoolEntry | None:
        row = await self._fetchrow(f"SELECT {cols()} FROM {self.schema}.entries WHERE queue_id = $1", queue_id)
        return entry_from_row(tuple(row)) if row is not None else None

    async def raw(self, queue_id: str) -> bytes:
        ahead = self._leases.raws.pop(queue_id, None)
        if ahead is not None:
            return ahead
        value = await self._fetchval(f"SELECT raw FROM {self.schema}.messages WHERE queue_id = $1", queue_id)
        if value is None:
            raise UnknownEntry(queue_id)
        return bytes(value)

    async def list(self, *, state: State | None = None, direction: Direction | None = None,
                   limit: int = 1000) -> list[SpoolEntry]:
        rows = await self._fetch(
            f"SELECT {cols()} FROM {self.schema}.entries WHERE ($1::text IS NULL OR state = $1) "
            "AND ($2::text IS NULL OR direction = $2) ORDER BY received_at, queue_id LIMIT $3",
            str(state) if state is not None else None, str(direction) if direction is not None else None, limit)
        return [entry_from_row(tuple(r)) for r in rows]

    async def scan(self, *, state: State | None = None, direction: Direction | None = None,
                   page: int = 500) -> AsyncIterator[SpoolEntry]:
        """Every entry, in `list`'s order, a page at a time: each page is one short statement after the last key
        seen, so no connection or transaction stays open while the caller works through it."""
        after: tuple[float, str] | None = None
        while True:
            rows = await self._fetch(
                f"SELECT {cols()} FROM {self.schema}.entries WHERE ($1::text IS NULL OR state = $1) "
                "AND ($2::text IS NULL OR direction = $2) "
                "AND ($3::float8 IS NULL OR (received_at, queue_id) > ($3::float8, $4::text)) "
                "ORDER BY received_at, queue_id LIMIT $5",
                str(state) if state is not None else None, str(direction) if direction is not None else None,
                after[0] if after else None, after[1] if after else None, page)
            for row in rows:
                yield entry_from_row(tuple(row))
            if len(rows) < page:
                return
            after = (rows[-1]["received_at"], rows[-1]["queue_id"])

    async def counts(self) -> dict[tuple[str, str], int]:
        rows = await self._fetch(f"SELECT direction, state, count(*) FROM {self.schema}.entries "
                                 "GROUP BY direction, state")
        return {(d, s): int(n) for d, s, n in rows}

    async def has_dedup_keys(self, keys: Sequence[str]) -> dict[str, str]:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        rows = await self._fetch(f"SELECT dedup_key, queue_id FROM {self.schema}.entries "
                                 "WHERE dedup_key = ANY($1::text[])", wanted)
        return {k: q for k, q in rows}

    async def find_message_ids(self, message_ids: Sequence[str]) -> dict[str, tuple[SpoolEntry, ...]]:
        wanted = sorted(set(message_ids))
        if not wanted:
            return {}
        rows = await self._fetch(f"SELECT {cols()} FROM {self.schema}.entries WHERE message_id = ANY($1::text[]) "
                                 "ORDER BY received_at", wanted)
        return by_message_id(entry_from_row(tuple(row)) for row in rows)

    # -- moving entries between spools ---------------------------------------------------------------

    async def export_rows(self, after: str, limit: int) -> Sequence[ExportRow]:
        rows = await self._fetch(
            f"SELECT {', '.join('e.' + c for c in EXPORT_COLUMNS)}, m.raw FROM {self.schema}.entries e "
            f"JOIN {self.schema}.messages m USING (queue_id) WHERE e.queue_id > $1 ORDER BY e.queue_id LIMIT $2",
            after, limit)
        return [(dict(zip(EXPORT_COLUMNS, tuple(r)[:-1], strict=True)), bytes(r["raw"])) for r in rows]

    async def import_rows(self, rows: Sequence[ExportRow]) -> Sequence[bool]:
        out = []
        async with self._conn() as conn, conn.transaction():
            for row, raw in rows:
                out.append(await conn.fetchval(self._sql.import_row, *import_values(row), raw) is not None)
        return out

    async def close(self) -> None:
        if self._closed:
            return
        await self._writer.close()
        await self._transitions.close()
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.renew_leases(), 5)  # releases what was given up
        self._closed = True
        if self._control is not None:
            await self._control.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._pool.close(), 10)
        self._pool.terminate()


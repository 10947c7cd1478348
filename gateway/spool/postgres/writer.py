"""Group commit of puts on PostgreSQL.

Every put waiting at the moment a writer is free goes into one INSERT statement, run outside an explicit
transaction, so it is its own transaction: one round trip, one commit, one WAL flush for the whole batch
(synchronous_commit is on, so the statement returns only after the flush). Each caller's future is resolved
after that; the SMTP intake says 250 only then. Two writers, so a batch is being assembled while the previous
one is in flight.

The statement takes the batch as one array per column (`unnest`), inserts entries with ON CONFLICT on the
ledger key (a key already stored, by anyone, is answered with the stored entry's id: that is the shared dedup
ledger), inserts the raw messages of the rows it created, and returns per row whether it was created. If the
statement fails for something one row carries (bad encoding, a duplicate queue id) the rows are redone one
statement each, so only that row fails; if the database is unreachable, every caller hears it (451 at the
SMTP intake, exit 75 from `mailgw pipe`) and nothing was acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from gateway.spool.base import PUT_COLUMNS, PutRow
from gateway.spool.postgres.connection import Health, checked_out, is_unavailable, unavailable

Result = tuple[str, bool] | BaseException

# Postgres types of PUT_COLUMNS, for the arrays of the unnest.
_TYPES = {"message_id_generated": "int4", "size": "int4", "received_at": "float8", "updated_at": "float8",
          "next_attempt_at": "float8"}
MAX_BATCH_BYTES = 32 * 1024 * 1024  # raw bytes per statement, whatever max_batch says


def insert_sql(schema: str) -> str:
    cols = ", ".join(PUT_COLUMNS)
    arrays = ", ".join(f"${i + 1}::{_TYPES.get(c, 'text')}[]" for i, c in enumerate(PUT_COLUMNS))
    raw = len(PUT_COLUMNS) + 1
    return f"""
WITH input AS (
    SELECT * FROM unnest({arrays}, ${raw}::bytea[]) WITH ORDINALITY AS t({cols}, raw, ord)
), stored AS (
    INSERT INTO {schema}.entries ({cols}) SELECT {cols} FROM input ORDER BY ord
    ON CONFLICT (dedup_key) DO NOTHING RETURNING queue_id
), raws AS (
    INSERT INTO {schema}.messages (queue_id, raw) SELECT i.queue_id, i.raw FROM input i JOIN stored USING (queue_id)
)
SELECT i.ord, stored.queue_id IS NOT NULL AS created, e.queue_id AS existing
FROM input i LEFT JOIN stored USING (queue_id)
LEFT JOIN {schema}.entries e ON stored.queue_id IS NULL AND e.dedup_key = i.dedup_key
ORDER BY i.ord"""


class _PutOp:
    __slots__ = ("future", "rows", "size")

    def __init__(self, rows: Sequence[PutRow], future: asyncio.Future[list[Result]]):
        self.rows = rows
        self.future = future
        self.size = sum(len(raw) for _row, raw, _key in rows)


Acquire = Callable[[], contextlib.AbstractAsyncContextManager[Any]]


class PutWriter:
    def __init__(self, acquire: Acquire, schema: str, health: Health, *, max_batch: int, window: float,
                 writers: int = 2):
        self._acquire = acquire
        self._schema = schema
        self._sql = insert_sql(schema)
        self._max_batch = max_batch
        self._window = window
        self._health = health
        self._pending: deque[_PutOp] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy = 0
        self.batches = 0
        self.ops = 0
        self._tasks = [asyncio.create_task(self._run(), name=f"mailgw-spool-writer-{i}") for i in range(writers)]

    async def submit(self, rows: Sequence[PutRow]) -> list[Result]:
        future: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
        self._pending.append(_PutOp(rows, future))
        self._idle.clear()
        self._wake.set()
        # A cancelled caller does not cancel the write: its batch may already be on the wire.
        return await asyncio.shield(future)

    async def close(self) -> None:
        """Finish what was submitted, then stop."""
        while self._pending or self._busy:
            await self._idle.wait()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            if self._window:
                await asyncio.sleep(self._window)
            batch = self._take()
            if not batch:
                continue
            if self._pending:
                self._wake.set()  # the other writer starts on the rest
            self._busy += 1
            try:
                await self._commit(batch)
            except BaseException as exc:  # a bug here must not leave callers waiting forever
                for op in batch:
                    if not op.future.done():
                        op.future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
                if not isinstance(exc, Exception):
                    raise
            finally:
                self._busy -= 1
                if not self._pending and not self._busy:
                    self._idle.set()

    def _take(self) -> list[_PutOp]:
        batch: list[_PutOp] = []
        rows = size = 0
        while self._pending:
            op = self._pending[0]
            if batch and (rows + len(op.rows) > self._max_batch or size + op.size > MAX_BATCH_BYTES):
                break
            batch.append(self._pending.popleft())
            rows += len(op.rows)
            size += op.size
        return batch

    async def _commit(self, batch: list[_PutOp]) -> None:
        rows = [row for op in batch for row in op.rows]
        try:
            results = await self._insert(rows)
        except Exception as exc:
            if is_unavailable(exc):
                self._health.down(exc)
                failure: BaseException = unavailable(exc)
            else:
                failure = exc
            for op in batch:
                if not op.future.done():
                    op.future.set_exception(failure)
            return
        self._health.up()
        self.batches += 1
        self.ops += len(batch)
        i = 0
        for op in batch:
            n = len(op.rows)
            if not op.future.done():
                op.future.set_result(results[i:i + n])
            i += n

    async def _insert(self, rows: list[PutRow]) -> list[Result]:
        """All rows in one statement; if it fails for a reason in the data, each row on its own."""
        good = [(i, row, raw) for i, (row, raw, _key) in enumerate(rows) if not isinstance(row, BaseException)]
        out: list[Result | None] = [row if isinstance(row, BaseException) else None for row, _raw, _key in rows]
        if not good:
            return [r for r in out if r is not None]
        async with checked_out(self._acquire) as conn:
            try:
                stored = await self._statement(conn, [(row, raw) for _i, row, raw in good])
            except Exception as exc:
                if is_unavailable(exc):
                    raise
                stored = []
                for _i, row, raw in good:
                    try:
                        [one] = await self._statement(conn, [(row, raw)])
                    except Exception as item_exc:
                        if is_unavailable(item_exc):
                            raise
                        stored.append(item_exc)
                    else:
                        stored.append(one)
            for (i, _row, _raw), result in zip(good, stored, strict=True):
                out[i] = result
            missing = [i for i, r in enumerate(out) if isinstance(r, tuple) and r[0] == ""]
            if missing:
                # Ledger keys another transaction committed while ours ran: not in our statement's snapshot.
                keys = [rows[i][2] for i in missing]
                found = dict(await conn.fetch(f"SELECT dedup_key, queue_id FROM {self._schema}.entries "
                                              "WHERE dedup_key = ANY($1::text[])", keys))
                for i, key in zip(missing, keys, strict=True):
                    out[i] = (found[key], False) if key in found else RuntimeError(f"ledger key {key} vanished")
        return [r for r in out if r is not None]

    async def _statement(self, conn: Any, rows: list[tuple[tuple[Any, ...], bytes]]) -> list[Result]:
        columns: list[list[Any]] = [[] for _ in PUT_COLUMNS]
        for row, _raw in rows:
            for col, value in zip(columns, row, strict=True):
                col.append(value)
        records = await conn.fetch(self._sql, *columns, [raw for _row, raw in rows])
        created: dict[str, str] = {}  # ledger key -> queue id created earlier in this batch
        out: list[Result] = []
        key_at = PUT_COLUMNS.index("dedup_key")
        for (row, _raw), rec in zip(rows, records, strict=True):
            queue_id, key = row[0], row[key_at]
            if rec["created"]:
                if key is not None:
                    created[key] = queue_id
                out.append((queue_id, True))
            elif rec["existing"] is not None:
                out.append((rec["existing"], False))
            elif key in created:
                out.append((created[key], False))  # the same key twice in one batch: the first one stored it
            else:
                out.append(("", False))  # resolved by the caller with a fresh snapshot
        return out

"""The grouped writes of the PostgreSQL spool (batching.py): puts and transitions.

Puts take the batch as one array per column (`unnest`). With ledger keys, the INSERT has ON CONFLICT on the key
(a key already stored, by anyone, is answered with the stored entry's id: that is the shared dedup ledger) and
returns per row whether it was created; without (SMTP, LMTP, pipe: the bulk of the intake) a plainer statement
does, at about half the database's CPU. If a statement fails for something one row carries (bad encoding, a
duplicate queue id) the rows are redone one statement each, so only that row fails; if the database is
unreachable every caller hears it (451 at the SMTP intake, exit 75 from `mailgw pipe`) and nothing was
acknowledged.

Transitions of concurrent deliveries (the inbound worker's write-behind `delivered`, deferrals) go into one
UPDATE the same way. Each row is checked against the transition table and fenced by its claim in SQL, and
comes back with the state it had, so the caller can tell "not allowed" from "not yours any more".
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from gateway.spool.base import ENTRY_COLUMNS, PUT_COLUMNS, TRANSITIONS, PutRow
from gateway.spool.postgres.batching import Acquire, Batcher, Op, each_alone
from gateway.spool.postgres.connection import Health, checked_out, is_unavailable

Result = tuple[str, bool] | BaseException

# Postgres types of PUT_COLUMNS, for the arrays of the unnest.
_TYPES = {"message_id_generated": "int4", "size": "int4", "received_at": "float8", "updated_at": "float8",
          "next_attempt_at": "float8"}
MAX_BATCH_BYTES = 32 * 1024 * 1024  # raw bytes per statement, whatever max_batch says


def _input(ordinality: bool) -> str:
    cols = ", ".join(PUT_COLUMNS)
    arrays = ", ".join(f"${i + 1}::{_TYPES.get(c, 'text')}[]" for i, c in enumerate(PUT_COLUMNS))
    raw = len(PUT_COLUMNS) + 1
    if ordinality:
        return f"SELECT * FROM unnest({arrays}, ${raw}::bytea[]) WITH ORDINALITY AS t({cols}, raw, ord)"
    return f"SELECT * FROM unnest({arrays}, ${raw}::bytea[]) AS t({cols}, raw)"


def insert_sql(schema: str) -> str:
    """For a batch with ledger keys: returns per row whether it was stored, or the id that has its key."""
    cols = ", ".join(PUT_COLUMNS)
    return f"""
WITH input AS ({_input(True)}
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


def insert_plain_sql(schema: str) -> str:
    """For a batch without ledger keys (SMTP, LMTP, pipe: the bulk of the intake): every row is stored, or the
    statement fails. About half the database's CPU of the statement above for a single row."""
    cols = ", ".join(PUT_COLUMNS)
    return f"""
WITH input AS ({_input(False)}
), stored AS (
    INSERT INTO {schema}.entries ({cols}) SELECT {cols} FROM input
)
INSERT INTO {schema}.messages (queue_id, raw) SELECT queue_id, raw FROM input"""


class PutOp(Op):
    __slots__ = ("rows", "size")

    def __init__(self, rows: Sequence[PutRow]):
        super().__init__()
        self.rows = rows
        self.size = sum(len(raw) for _row, raw, _key in rows)


class PutWriter(Batcher[PutOp]):
    name = "puts"

    def __init__(self, acquire: Acquire, schema: str, health: Health, *, max_batch: int, window: float):
        super().__init__(acquire, health, max_batch=max_batch, window=window)
        self._schema = schema
        self._sql = insert_sql(schema)
        self._plain_sql = insert_plain_sql(schema)

    def _take(self) -> list[PutOp]:
        batch: list[PutOp] = []
        rows = size = 0
        while self._pending:
            op = self._pending[0]
            if batch and (rows + len(op.rows) > self._max_batch or size + op.size > MAX_BATCH_BYTES):
                break
            batch.append(self._pending.popleft())
            rows += len(op.rows)
            size += op.size
        return batch

    async def _commit(self, batch: list[PutOp]) -> None:
        results = await self._insert([row for op in batch for row in op.rows])
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
            items = [(row, raw) for _i, row, raw in good]
            try:
                stored = await self._statement(conn, items)
            except Exception as exc:
                if is_unavailable(exc):
                    raise
                stored = await each_alone(lambda one: self._statement(conn, one), items)
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
        key_at = PUT_COLUMNS.index("dedup_key")
        if not any(columns[key_at]):
            await conn.execute(self._plain_sql, *columns, [raw for _row, raw in rows])
            return [(row[0], True) for row, _raw in rows]
        records = await conn.fetch(self._sql, *columns, [raw for _row, raw in rows])
        created: dict[str, str] = {}  # ledger key -> queue id created earlier in this batch
        out: list[Result] = []
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


# Every allowed (direction, from, to), as SQL literals: the transition table checked in the statement itself.
_ALLOWED = ", ".join(f"('{d}', '{f}', '{t}')" for d, table in TRANSITIONS.items() for f, tos in table.items()
                     for t in tos)
_TRANSITION_TYPES = ("text", "text", "text", "float8", "text", "text", "int4", "bool", "bool", "text")


def transition_sql(schema: str) -> str:
    arrays = ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(_TRANSITION_TYPES))
    cols = ", ".join(f"e.{c}" for c in ENTRY_COLUMNS)
    release = {c: f"CASE WHEN i.release THEN NULL ELSE e.{c} END"
               for c in ("claimed_by", "claimed_at", "claim_instance", "claim_token", "lease_expires_at")}
    return f"""
WITH input AS (
    SELECT * FROM unnest({arrays}) WITH ORDINALITY
        AS i(queue_id, to_state, error, next_at, route, rcpt_status, add_attempts, reset_crashes, release, fence, ord)
), cur AS (
    SELECT queue_id, direction, state, claim_token, claimed_by, lease_expires_at < now() AS expired
    FROM {schema}.entries WHERE queue_id IN (SELECT queue_id FROM input) ORDER BY queue_id FOR UPDATE
), changed AS (
    UPDATE {schema}.entries e SET state = i.to_state, updated_at = $11, last_error = i.error,
        next_attempt_at = i.next_at, route = coalesce(i.route, e.route),
        rcpt_status = coalesce(i.rcpt_status, e.rcpt_status), attempts = e.attempts + i.add_attempts,
        crashes = CASE WHEN i.reset_crashes THEN 0 ELSE e.crashes END,
        {", ".join(f"{c} = {v}" for c, v in release.items())}
    FROM input i JOIN cur c USING (queue_id)
    WHERE e.queue_id = i.queue_id AND (c.direction, c.state, i.to_state) IN (VALUES {_ALLOWED})
        -- the entry's claim, if this process holds it, must still be that claim; else nobody's live claim
        AND CASE WHEN i.fence IS NOT NULL THEN c.claim_token IS NOT DISTINCT FROM i.fence
                 ELSE c.claim_token IS NULL OR starts_with(c.claim_token, $12) OR c.expired END
    RETURNING {cols}
)
SELECT i.ord, c.direction AS cur_direction, c.state AS cur_state, c.claimed_by AS cur_claimed_by, ch.*
FROM input i LEFT JOIN cur c USING (queue_id) LEFT JOIN changed ch USING (queue_id) ORDER BY i.ord"""


class TransitionOp(Op):
    """The values of one transition, in the order of _TRANSITION_TYPES."""

    __slots__ = ("values",)

    def __init__(self, values: tuple[Any, ...]):
        super().__init__()
        self.values = values


class TransitionWriter(Batcher[TransitionOp]):
    """Each op's result: (direction, state) it was in and the entry as changed (None when it was not), or None
    when there is no such entry."""

    name = "transitions"

    def __init__(self, acquire: Acquire, schema: str, health: Health, *, own_prefix: str, max_batch: int = 256):
        super().__init__(acquire, health, max_batch=max_batch)
        self._sql = transition_sql(schema)
        self._own_prefix = own_prefix

    def _take(self) -> list[TransitionOp]:
        """Up to max_batch ops, at most one per entry (an UPDATE changes a row once): a second one for the same
        entry waits for the next batch, in order."""
        batch: list[TransitionOp] = []
        seen: set[str] = set()
        later: list[TransitionOp] = []
        while self._pending and len(batch) < self._max_batch:
            op = self._pending.popleft()
            if op.values[0] in seen:
                later.append(op)
                continue
            seen.add(op.values[0])
            batch.append(op)
        self._pending.extendleft(reversed(later))
        return batch

    async def _commit(self, batch: list[TransitionOp]) -> None:
        async with checked_out(self._acquire) as conn:
            try:
                results = await self._statement(conn, [op.values for op in batch])
            except Exception as exc:
                if is_unavailable(exc):
                    raise
                results = await each_alone(lambda one: self._statement(conn, one), [op.values for op in batch])
        for op, result in zip(batch, results, strict=True):
            if op.future.done():
                continue
            if isinstance(result, BaseException):
                op.future.set_exception(result)
            else:
                op.future.set_result(result)

    async def _statement(self, conn: Any, rows: list[tuple[Any, ...]]) -> list[Any]:
        columns = [list(col) for col in zip(*rows, strict=True)]
        records = await conn.fetch(self._sql, *columns, time.time(), self._own_prefix)
        return [None if rec["cur_state"] is None else rec for rec in records]

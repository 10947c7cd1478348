"""SqliteSpool: the Spool interface on SQLite (the default; see the package docstring)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from gateway.logs import get_logger
from gateway.spool.base import (
    ACTIVE,
    DEFERRABLE,
    EXPORT_COLUMNS,
    PARKED,
    TRANSITIONS,
    Direction,
    ExportRow,
    InvalidTransition,
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
from gateway.spool.sqlite.schema import COLUMNS, FIRST_SCHEMA_VERSION, SCHEMA, connect, in_chunks, migrate
from gateway.spool.sqlite.writer import GroupCommitWriter

log = get_logger("mailgw.spool")
T = TypeVar("T")


class SqliteSpool(Spool):
    """The default spool. Create with `await SqliteSpool.open(path)`."""

    def __init__(self, path: Path, *, max_batch: int = 256, commit_window: float = 0.0):
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        # The spool holds mail. SQLite would create the file with the umask's mode (0644 as a rule) and gives the
        # -wal and -shm files the mode of the database file: create it 0600 first (an existing file keeps the
        # mode an operator gave it).
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        conn = connect(self.path)
        conn.executescript(SCHEMA)
        conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', ?)", (str(FIRST_SCHEMA_VERSION),))
        migrate(conn)
        self._writer = GroupCommitWriter(conn, max_batch, commit_window)
        self._local = threading.local()
        self._readers = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="mailgw-spool-read")
        self._reader_conns: list[sqlite3.Connection] = []
        self._closed = False

    @classmethod
    async def open(cls, path: Path | str, *, max_batch: int = 256, commit_window: float = 0.0) -> SqliteSpool:
        return await asyncio.to_thread(cls, Path(path), max_batch=max_batch, commit_window=commit_window)

    # -- plumbing ---------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolError("spool is closed")

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._check_open()
        fut = self._writer.submit(fn, asyncio.get_running_loop())
        assert isinstance(fut, asyncio.Future)
        return await fut

    def write_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """For non-async callers (tests, tools): blocks until committed."""
        fut = self._writer.submit(fn)
        assert isinstance(fut, concurrent.futures.Future)
        return fut.result()

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            self._local.conn = conn
            self._reader_conns.append(conn)
        return conn

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._check_open()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, lambda: fn(self._reader()))

    @property
    def stats(self) -> dict[str, int]:
        return {"commit_batches": self._writer.batches, "commit_ops": self._writer.ops}

    # -- writes -----------------------------------------------------------------------------------------

    async def put_many(self, items: Sequence[PutItem]) -> list[tuple[str, bool] | BaseException]:
        """Store several messages in one writer operation (one commit). Each item is stored or fails on its
        own; results come back in order: (queue_id, created) or the item's exception."""
        self._check_open()
        rows = [put_row(item) for item in items]
        results = await self._writer.submit_rows(rows, asyncio.get_running_loop())
        log_puts(items, rows, results)
        return results

    async def claim(self, direction: Direction, worker: str, *, limit: int, now: float | None = None
                    ) -> list[SpoolEntry]:
        states = sorted(str(s) for s in ACTIVE[direction])
        marks = ",".join("?" * len(states))

        due = (f"SELECT queue_id FROM entries WHERE direction=? AND state IN ({marks})"
               f" AND next_attempt_at<=? AND claimed_by IS NULL ORDER BY received_at, queue_id LIMIT ?")
        if direction == Direction.OUTBOUND:
            # Round robin between sender domains (one Odoo instance each), each in arrival order: a mailing of
            # thousands from one instance does not hold back another instance's mail.
            due = (f"SELECT queue_id FROM (SELECT queue_id, received_at, ROW_NUMBER() OVER (PARTITION BY"
                   f" lower(substr(mail_from, instr(mail_from, '@') + 1)) ORDER BY received_at, queue_id) AS turn"
                   f" FROM entries WHERE direction=? AND state IN ({marks}) AND next_attempt_at<=?"
                   f" AND claimed_by IS NULL) ORDER BY turn, received_at, queue_id LIMIT ?")

        def op(conn: sqlite3.Connection) -> list[SpoolEntry]:
            at = time.time() if now is None else now
            # Arrival order among what is due, so a sender's mail reaches Odoo in the order it came.
            rows = conn.execute(
                f"UPDATE entries SET claimed_by=?, claimed_at=? WHERE queue_id IN ({due}) RETURNING {COLUMNS}",
                (worker, at, str(direction), *states, at, limit),
            ).fetchall()
            entries = [entry_from_row(r) for r in rows]
            entries.sort(key=lambda e: (e.envelope.received_at, e.queue_id))
            return entries

        return await self._write(op)

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
    ) -> SpoolEntry:
        def op(conn: sqlite3.Connection) -> tuple[State, SpoolEntry]:
            row = conn.execute("SELECT direction, state FROM entries WHERE queue_id=?", (queue_id,)).fetchone()
            if row is None:
                raise UnknownEntry(queue_id)
            direction, current = Direction(row[0]), State(row[1])
            if to not in TRANSITIONS[direction][current]:
                raise InvalidTransition(f"{queue_id}: {current} -> {to} is not allowed for {direction} mail")
            now = time.time()
            sets = ["state=?", "updated_at=?", "last_error=?", "next_attempt_at=?"]
            args: list[Any] = [str(to), now, error, now if next_attempt_at is None else next_attempt_at]
            if route is not None:
                sets.append("route=?")
                args.append(dumps(route))
            if rcpt_status is not None:
                sets.append("rcpt_status=?")
                args.append(dumps(rcpt_status))
            if count_attempt:
                sets.append("attempts=attempts+1")
            if release:
                sets.append("claimed_by=NULL, claimed_at=NULL")
            new = conn.execute(
                f"UPDATE entries SET {', '.join(sets)} WHERE queue_id=? RETURNING {COLUMNS}", (*args, queue_id)
            ).fetchone()
            return current, entry_from_row(new)

        current, entry = await self._write(op)
        log_transition(queue_id, current, to, entry, error)
        return entry

    async def defer_many(self, queue_ids: Sequence[str], *, next_attempt_at: float, error: str) -> list[str]:
        if not queue_ids:
            return []
        def op(conn: sqlite3.Connection) -> list[str]:
            moved: list[str] = []
            now = time.time()
            for marks, chunk in in_chunks(queue_ids):
                moved.extend(q for (q,) in conn.execute(
                    f"UPDATE entries SET state=?, updated_at=?, last_error=?, next_attempt_at=?, claimed_by=NULL, "
                    f"claimed_at=NULL WHERE direction=? AND state IN ({','.join('?' * len(DEFERRABLE))}) "
                    f"AND queue_id IN ({marks}) RETURNING queue_id",
                    (str(State.DEFERRED), now, error, next_attempt_at, str(Direction.INBOUND), *DEFERRABLE, *chunk)))
            return moved

        moved = await self._write(op)
        log_deferred(moved, error)
        return moved

    async def release(self, queue_id: str) -> None:
        await self._write(lambda c: c.execute(
            "UPDATE entries SET claimed_by=NULL, claimed_at=NULL WHERE queue_id=?", (queue_id,)))

    async def delete(self, queue_id: str, *, only_in: State | None = None) -> None:
        def op(conn: sqlite3.Connection) -> None:
            if only_in is None:
                cur = conn.execute("DELETE FROM entries WHERE queue_id=?", (queue_id,))
            else:  # in the same statement: the entry cannot change state between the check and the delete
                cur = conn.execute("DELETE FROM entries WHERE queue_id=? AND state=?", (queue_id, str(only_in)))
            if cur.rowcount == 0:
                if only_in is not None and conn.execute("SELECT 1 FROM entries WHERE queue_id=?",
                                                        (queue_id,)).fetchone():
                    raise InvalidTransition(f"{queue_id} is no longer {only_in}")
                raise UnknownEntry(queue_id)
            conn.execute("DELETE FROM messages WHERE queue_id=?", (queue_id,))

        await self._write(op)
        log.info("spool.deleted", queue_id=queue_id)

    async def requeue(self, queue_id: str) -> SpoolEntry:
        """Operator retry: failed/exception/cancel -> received/outgoing, due now, crash counter cleared."""
        entry, target = await requeue_target(self, queue_id)
        if target is None:
            return entry
        new = await self.transition(queue_id, target, error=None, next_attempt_at=time.time())
        await self._write(lambda c: c.execute("UPDATE entries SET crashes=0 WHERE queue_id=?", (queue_id,)))
        return new

    async def wake(self, queue_ids: Sequence[str], now: float | None = None) -> int:
        """Make these entries due now (an instance came back: do not wait out every backoff)."""
        if not queue_ids:
            return 0
        at = time.time() if now is None else now

        def op(conn: sqlite3.Connection) -> int:
            total = 0
            for marks, chunk in in_chunks(queue_ids):
                cur = conn.execute(f"UPDATE entries SET next_attempt_at=? WHERE next_attempt_at>? AND queue_id IN "
                                   f"({marks})", (at, at, *chunk))
                total += cur.rowcount
            return total

        return await self._write(op)

    async def recover(self, crash_limit: int = 3) -> RecoveryReport:
        """At start-up: entries still claimed were being worked on when the process died."""

        def op(conn: sqlite3.Connection) -> RecoveryReport:
            rows = conn.execute(
                "SELECT queue_id, direction, state, crashes FROM entries WHERE claimed_by IS NOT NULL").fetchall()
            released, parked = [], []
            now = time.time()
            for queue_id, direction, state, crashes in rows:
                crashes += 1
                if crashes >= crash_limit:
                    conn.execute(
                        "UPDATE entries SET state=?, crashes=?, claimed_by=NULL, claimed_at=NULL, updated_at=?, "
                        "last_error=? WHERE queue_id=?",
                        (str(PARKED[Direction(direction)]), crashes, now, parked_reason(crashes, state), queue_id))
                    parked.append(queue_id)
                else:
                    conn.execute("UPDATE entries SET crashes=?, claimed_by=NULL, claimed_at=NULL WHERE queue_id=?",
                                 (crashes, queue_id))
                    released.append(queue_id)
            return RecoveryReport(tuple(released), tuple(parked))

        report = await self._write(op)
        report.log()
        return report

    # -- reads ------------------------------------------------------------------------------------------

    async def get(self, queue_id: str) -> SpoolEntry | None:
        def fn(conn: sqlite3.Connection) -> SpoolEntry | None:
            row = conn.execute(f"SELECT {COLUMNS} FROM entries WHERE queue_id=?", (queue_id,)).fetchone()
            return entry_from_row(row) if row else None

        return await self._read(fn)

    async def raw(self, queue_id: str) -> bytes:
        def fn(conn: sqlite3.Connection) -> bytes:
            row = conn.execute("SELECT raw FROM messages WHERE queue_id=?", (queue_id,)).fetchone()
            if row is None:
                raise UnknownEntry(queue_id)
            return bytes(row[0])

        return await self._read(fn)

    @staticmethod
    def _list_query(state: State | None, direction: Direction | None) -> tuple[str, list[Any]]:
        where: list[str] = []
        args: list[Any] = []
        if state is not None:
            where.append("state=?")
            args.append(str(state))
        if direction is not None:
            where.append("direction=?")
            args.append(str(direction))
        sql = f"SELECT {COLUMNS} FROM entries"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return sql + " ORDER BY received_at, queue_id", args

    async def list(self, *, state: State | None = None, direction: Direction | None = None,
                   limit: int = 1000) -> list[SpoolEntry]:
        sql, args = self._list_query(state, direction)

        def fn(conn: sqlite3.Connection) -> list[SpoolEntry]:
            return [entry_from_row(r) for r in conn.execute(sql + " LIMIT ?", (*args, limit)).fetchall()]

        return await self._read(fn)

    async def scan(self, *, state: State | None = None, direction: Direction | None = None,
                   page: int = 500) -> AsyncIterator[SpoolEntry]:
        """One query on a connection of its own, read `page` rows at a time: one sort for the whole queue, memory
        flat however long it is (a consistent snapshot: the read transaction lasts until the end)."""
        self._check_open()
        sql, args = self._list_query(state, direction)
        conn = await asyncio.to_thread(connect, self.path)
        try:
            cursor = await asyncio.to_thread(conn.execute, sql, args)
            while rows := await asyncio.to_thread(cursor.fetchmany, page):
                for row in rows:
                    yield entry_from_row(row)
        finally:
            await asyncio.to_thread(conn.close)

    async def counts(self) -> dict[tuple[str, str], int]:
        def fn(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
            rows = conn.execute("SELECT direction, state, COUNT(*) FROM entries GROUP BY direction, state")
            return {(d, s): n for d, s, n in rows.fetchall()}

        return await self._read(fn)

    async def has_dedup_keys(self, keys: Sequence[str]) -> dict[str, str]:
        """Which of these ledger keys are stored: key -> queue_id (one read for a whole batch)."""
        wanted = list(dict.fromkeys(keys))

        def fn(conn: sqlite3.Connection) -> dict[str, str]:
            found: dict[str, str] = {}
            for marks, chunk in in_chunks(wanted):
                found.update(conn.execute(f"SELECT dedup_key, queue_id FROM entries WHERE dedup_key IN ({marks})",
                                          chunk).fetchall())
            return found

        return await self._read(fn) if wanted else {}

    async def find_message_ids(self, message_ids: Sequence[str]) -> dict[str, tuple[SpoolEntry, ...]]:
        """Message-Id -> the entries carrying it, for a batch (mailbox intakes spot what they already spooled)."""
        wanted = sorted(set(message_ids))

        def fn(conn: sqlite3.Connection) -> dict[str, tuple[SpoolEntry, ...]]:
            return by_message_id(entry_from_row(row) for marks, part in in_chunks(wanted) for row in conn.execute(
                f"SELECT {COLUMNS} FROM entries WHERE message_id IN ({marks}) ORDER BY received_at", part).fetchall())

        return await self._read(fn) if wanted else {}

    # -- moving entries between spools ---------------------------------------------------------------

    async def export_rows(self, after: str, limit: int) -> Sequence[ExportRow]:
        names = EXPORT_COLUMNS

        def fn(conn: sqlite3.Connection) -> Sequence[ExportRow]:
            rows = conn.execute(
                f"SELECT {', '.join('e.' + n for n in names)}, m.raw FROM entries e "
                "JOIN messages m ON m.queue_id = e.queue_id WHERE e.queue_id > ? ORDER BY e.queue_id LIMIT ?",
                (after, limit)).fetchall()
            return [(dict(zip(names, row[:-1], strict=True)), bytes(row[-1])) for row in rows]

        return await self._read(fn)

    async def import_rows(self, rows: Sequence[ExportRow]) -> Sequence[bool]:
        names = [n for n in EXPORT_COLUMNS if n != "claimed_by"]

        def op(conn: sqlite3.Connection) -> Sequence[bool]:
            out = []
            for row, raw in rows:
                cur = conn.execute(f"INSERT OR IGNORE INTO entries ({', '.join(names)}) VALUES "
                                   f"({','.join('?' * len(names))})", [row.get(n) for n in names])
                if cur.rowcount:
                    conn.execute("INSERT OR REPLACE INTO messages (queue_id, raw) VALUES (?, ?)",
                                 (row["queue_id"], raw))
                out.append(bool(cur.rowcount))
            return out

        return await self._write(op)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._writer.stop)
        self._readers.shutdown(wait=True)
        for conn in self._reader_conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass

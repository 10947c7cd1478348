"""SQLite spool: WAL, synchronous=FULL, one writer thread that groups commits.

Why a writer thread: with synchronous=FULL every COMMIT is an fsync. Twenty SMTP sessions committing one
by one would serialise on fsync; instead every write is queued to one thread that takes all writes waiting
at that moment and commits them together — one fsync per batch (group commit); one failing write does not
undo the others (the rows of all puts are inserted together, other writes get a SAVEPOINT each when they share
the transaction; see `_GroupCommitWriter._commit`). Callers get their result only after that COMMIT returned,
which is what lets the SMTP layer say 250 only for mail that is on disk.

Reads run on their own connection in a small thread pool; WAL keeps them from blocking the writer. Another
process (`mailgw pipe`) may write to the same file; SQLite's lock plus busy_timeout arbitrates.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from gateway.logs import get_logger
from gateway.spool.base import (
    ACTIVE,
    ADDED_COLUMNS,
    ENTRY_COLUMNS,
    EXPORT_COLUMNS,
    PARKED,
    PUT_COLUMNS,
    REQUEUE,
    SCHEMA_VERSION,
    TRANSITIONS,
    Direction,
    ExportRow,
    InvalidTransition,
    PutItem,
    PutRow,
    RecoveryReport,
    Spool,
    SpoolEntry,
    SpoolError,
    State,
    UnknownEntry,
    dumps,
    entry_from_row,
    log_puts,
    log_transition,
    parked_reason,
    put_row,
)

log = get_logger("mailgw.spool")
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    queue_id TEXT PRIMARY KEY,
    direction TEXT NOT NULL,
    state TEXT NOT NULL,
    mail_from TEXT NOT NULL,
    rcpt_tos TEXT NOT NULL,
    intake TEXT NOT NULL,
    peer TEXT,
    helo TEXT,
    source TEXT,
    message_id TEXT,
    message_id_generated INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL,
    received_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    route TEXT,
    rcpt_status TEXT,
    claimed_by TEXT,
    claimed_at REAL,
    crashes INTEGER NOT NULL DEFAULT 0,
    dedup_key TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS entries_due ON entries(direction, state, next_attempt_at);
CREATE INDEX IF NOT EXISTS entries_state ON entries(state);
CREATE INDEX IF NOT EXISTS entries_message_id ON entries(message_id);
CREATE TABLE IF NOT EXISTS messages (
    queue_id TEXT PRIMARY KEY,
    raw BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# SCHEMA is the first version; the columns added since (base.ADDED_COLUMNS) are added by `_migrate`, for a new
# spool as for an old one, so there is one path to test.
FIRST_SCHEMA_VERSION = 1

_INSERT_ENTRY = f"INSERT INTO entries ({', '.join(PUT_COLUMNS)}) VALUES "
_INSERT_MESSAGE = "INSERT INTO messages (queue_id, raw) VALUES "
_ENTRY_VALUES = "(" + ",".join("?" * len(PUT_COLUMNS)) + ")"
_COLUMNS = ", ".join(ENTRY_COLUMNS)


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a spool written by an older mailgw up to SCHEMA_VERSION. The daemon and `mailgw pipe` may open the
    same old spool at once: the check is repeated inside the write lock."""

    def missing() -> list[tuple[int, str, str]]:
        have = {row[1] for row in conn.execute("PRAGMA table_info(entries)")}
        return [added for added in ADDED_COLUMNS if added[1] not in have]

    if not missing():
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for _version, column, sql_type in missing():
            conn.execute(f"ALTER TABLE entries ADD COLUMN {column} {sql_type}")
        conn.execute("INSERT INTO meta(key, value) VALUES ('schema', ?) "
                     "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (str(SCHEMA_VERSION),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def connect(path: Path | str, *, busy_timeout_ms: int = 30000) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000)
    conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: the WAL is fsynced at every commit, so a committed message survives power loss.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


_Row = PutRow
_MAX_PARAMS = 500  # values per IN (...): well under SQLite's bound-parameter limit
_MAX_ROWS_PER_INSERT = 256


def _max_params(conn: sqlite3.Connection) -> int:
    # 999 before SQLite 3.32, 32766 after; the connection knows its own.
    return int(conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))


def _in_chunks(values: Sequence[Any]) -> Iterator[tuple[str, list[Any]]]:
    """("?,?,…", chunk) for each slice of `values`, for `... IN (%s)` statements."""
    for i in range(0, len(values), _MAX_PARAMS):
        chunk = list(values[i:i + _MAX_PARAMS])
        yield ",".join("?" * len(chunk)), chunk


def _insert_batch(conn: sqlite3.Connection, rows: Sequence[_Row]) -> list[tuple[str, bool] | BaseException]:
    """Insert every row with executemany; a ledger key already stored (or repeated in the batch) yields
    (existing queue_id, False). Raises sqlite3.Error for the caller to fall back to `_insert_each`."""
    keys = [key for row, _raw, key in rows if key is not None and not isinstance(row, BaseException)]
    known: dict[str, str] = {}
    for marks, chunk in _in_chunks(keys):
        known.update(conn.execute(f"SELECT dedup_key, queue_id FROM entries WHERE dedup_key IN ({marks})",
                                  chunk).fetchall())
    out: list[tuple[str, bool] | BaseException] = []
    entries, messages = [], []
    for row, raw, key in rows:
        if isinstance(row, BaseException):
            out.append(row)
        elif key is not None and key in known:
            out.append((known[key], False))
        else:
            if key is not None:
                known[key] = row[0]
            entries.append(row)
            messages.append((row[0], raw))
            out.append((row[0], True))
    _insert_rows(conn, _INSERT_ENTRY, entries)
    _insert_rows(conn, _INSERT_MESSAGE, messages)
    return out


def _insert_rows(conn: sqlite3.Connection, head: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """INSERT with one multi-row VALUES list per chunk instead of executemany. Python's sqlite3 gives up and
    retakes the GIL around every statement step; with executemany that is one GIL hand-over per row, and each
    one waits for the event loop (which holds the GIL while it parses mail) — 5 ms per 10-message commit."""
    if not rows:
        return
    width = len(rows[0])
    values = "(" + ",".join("?" * width) + ")"
    per = max(1, min(_MAX_ROWS_PER_INSERT, _max_params(conn) // width))
    for i in range(0, len(rows), per):
        chunk = rows[i:i + per]
        conn.execute(head + ",".join([values] * len(chunk)), [v for row in chunk for v in row])


def _insert_each(conn: sqlite3.Connection, rows: Sequence[_Row]) -> list[tuple[str, bool] | BaseException]:
    """One SAVEPOINT per row: a row that fails is reported and the others are stored."""
    out: list[tuple[str, bool] | BaseException] = []
    for row, raw, key in rows:
        conn.execute("SAVEPOINT item")
        try:
            if isinstance(row, BaseException):
                raise row
            if key is not None:
                found = conn.execute("SELECT queue_id FROM entries WHERE dedup_key=?", (key,)).fetchone()
                if found:
                    conn.execute("RELEASE item")
                    out.append((found[0], False))
                    continue
            conn.execute(_INSERT_ENTRY + _ENTRY_VALUES, row)
            conn.execute(_INSERT_MESSAGE + "(?,?)", (row[0], raw))
        except Exception as exc:
            conn.execute("ROLLBACK TO item")
            out.append(exc)
        else:
            out.append((row[0], True))
        conn.execute("RELEASE item")
    return out


class _Op:
    """One write and where its result goes: an asyncio future (resolved on its loop) or a concurrent one.

    Either `fn(conn)`, or `rows` to insert (put_many): the writer stores the rows of every put in a batch with
    one set of statements (see `_GroupCommitWriter._commit`).
    """

    __slots__ = ("fn", "future", "loop", "rows")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any] | None, loop: asyncio.AbstractEventLoop | None = None,
                 rows: Sequence[_Row] | None = None):
        self.fn = fn
        self.rows = rows
        self.loop = loop
        self.future: asyncio.Future[Any] | concurrent.futures.Future[Any] = (
            loop.create_future() if loop is not None else concurrent.futures.Future())


def _settle(fut: asyncio.Future[Any] | concurrent.futures.Future[Any], value: Any, exc: BaseException | None) -> None:
    if fut.done():  # the caller was cancelled; the write happened anyway
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)


def _settle_all(outcomes: Sequence[tuple[_Op, Any, BaseException | None]]) -> None:
    for op, value, exc in outcomes:
        _settle(op.future, value, exc)


def _resolve(outcomes: Sequence[tuple[_Op, Any, BaseException | None]]) -> None:
    """Hand results back: one call into each event loop per batch, not one per op."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Op, Any, BaseException | None]]] = {}
    for outcome in outcomes:
        loop = outcome[0].loop
        if loop is None:
            _settle(outcome[0].future, outcome[1], outcome[2])
        else:
            by_loop.setdefault(loop, []).append(outcome)
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(_settle_all, items)


_STOP = object()


class _GroupCommitWriter:
    """The one thread that writes. See the module docstring."""

    def __init__(self, conn: sqlite3.Connection, max_batch: int, window: float):
        self._conn = conn
        self._max_batch = max_batch
        self._window = window
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.batches = 0
        self.ops = 0
        self._thread = threading.Thread(target=self._run, name="mailgw-spool-writer", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[sqlite3.Connection], T], loop: asyncio.AbstractEventLoop | None = None
               ) -> asyncio.Future[T] | concurrent.futures.Future[T]:
        op = _Op(fn, loop)
        self._queue.put(op)
        return op.future

    def submit_rows(self, rows: Sequence[_Row], loop: asyncio.AbstractEventLoop
                    ) -> asyncio.Future[list[tuple[str, bool] | BaseException]]:
        op = _Op(None, loop, rows)
        self._queue.put(op)
        assert isinstance(op.future, asyncio.Future)
        return op.future

    def stop(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()
        self._conn.close()

    def _collect(self, first: _Op) -> tuple[list[_Op], bool]:
        batch = [first]
        deadline = time.monotonic() + self._window
        stop = False
        while len(batch) < self._max_batch:
            try:
                timeout = deadline - time.monotonic()
                item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch, stop = self._collect(item)
            try:
                self._commit(batch)
            except BaseException as exc:  # a bug here must not kill the thread every write waits on
                _resolve([(op, None, SpoolError(f"spool writer failed: {exc!r}")) for op in batch
                          if not op.future.done()])
            if stop:
                return

    def _commit(self, batch: list[_Op]) -> None:
        """One transaction for the batch. Each statement costs this thread a turn at the GIL, which it waits for
        while the event loop runs, so the statement count per commit is kept independent of the batch size: the
        rows of every put are inserted together, and an op alone in its transaction needs no SAVEPOINT."""
        conn = self._conn
        puts = [op for op in batch if op.rows is not None]
        others = [op for op in batch if op.rows is None]
        results: list[tuple[_Op, Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            if puts:
                stored = self._put_rows([row for op in puts for row in op.rows or ()])
                i = 0
                for op in puts:
                    n = len(op.rows or ())
                    results.append((op, stored[i:i + n], None))
                    i += n
            isolate = len(batch) > 1
            for op in others:
                assert op.fn is not None
                if isolate:
                    conn.execute("SAVEPOINT op")
                try:
                    value = op.fn(conn)
                except BaseException as exc:  # the op's own error goes back to its caller
                    if not isolate:  # alone in the transaction: rolling it back undoes only this op
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                        _resolve([(op, None, exc)])
                        return
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    results.append((op, None, exc))
                else:
                    if isolate:
                        conn.execute("RELEASE op")
                    results.append((op, value, None))
            conn.execute("COMMIT")
        except BaseException as exc:  # the batch did not commit: every caller must hear it
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            failure = SpoolError(f"spool commit failed: {exc}")
            _resolve([(op, None, failure) for op in batch])
            return
        self.batches += 1
        self.ops += len(batch)
        _resolve(results)

    def _put_rows(self, rows: Sequence[_Row]) -> list[tuple[str, bool] | BaseException]:
        """Insert the rows of every put in the batch, right after BEGIN (so no SAVEPOINT is needed: the
        transaction holds nothing else yet). If the fast path fails (a duplicate queue id, a constraint), start
        the transaction again and redo the rows one SAVEPOINT each, so that only the bad ones fail."""
        conn = self._conn
        try:
            return _insert_batch(conn, rows)
        except sqlite3.Error:
            conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            return _insert_each(conn, rows)


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
        _migrate(conn)
        self._writer = _GroupCommitWriter(conn, max_batch, commit_window)
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
                f"UPDATE entries SET claimed_by=?, claimed_at=? WHERE queue_id IN ({due}) RETURNING {_COLUMNS}",
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
                f"UPDATE entries SET {', '.join(sets)} WHERE queue_id=? RETURNING {_COLUMNS}", (*args, queue_id)
            ).fetchone()
            return current, entry_from_row(new)

        current, entry = await self._write(op)
        log_transition(queue_id, current, to, entry, error)
        return entry

    async def defer_many(self, queue_ids: Sequence[str], *, next_attempt_at: float, error: str) -> list[str]:
        if not queue_ids:
            return []
        deferrable = sorted(str(st) for st, to in TRANSITIONS[Direction.INBOUND].items() if State.DEFERRED in to)

        def op(conn: sqlite3.Connection) -> list[str]:
            moved: list[str] = []
            now = time.time()
            for marks, chunk in _in_chunks(queue_ids):
                moved.extend(q for (q,) in conn.execute(
                    f"UPDATE entries SET state=?, updated_at=?, last_error=?, next_attempt_at=?, claimed_by=NULL, "
                    f"claimed_at=NULL WHERE direction=? AND state IN ({','.join('?' * len(deferrable))}) "
                    f"AND queue_id IN ({marks}) RETURNING queue_id",
                    (str(State.DEFERRED), now, error, next_attempt_at, str(Direction.INBOUND), *deferrable, *chunk)))
            return moved

        moved = await self._write(op)
        for queue_id in moved:
            log.info("spool.transition", queue_id=queue_id, to=str(State.DEFERRED), error=error)
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
        entry = await self.get(queue_id)
        if entry is None:
            raise UnknownEntry(queue_id)
        target = REQUEUE[entry.direction]
        if entry.state == target and entry.direction == Direction.OUTBOUND:
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
            for marks, chunk in _in_chunks(queue_ids):
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
        if report.released or report.parked:
            log.warning("spool.recovered", released=len(report.released), parked=list(report.parked))
        return report

    # -- reads ------------------------------------------------------------------------------------------

    async def get(self, queue_id: str) -> SpoolEntry | None:
        def fn(conn: sqlite3.Connection) -> SpoolEntry | None:
            row = conn.execute(f"SELECT {_COLUMNS} FROM entries WHERE queue_id=?", (queue_id,)).fetchone()
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
        sql = f"SELECT {_COLUMNS} FROM entries"
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
            for marks, chunk in _in_chunks(wanted):
                found.update(conn.execute(f"SELECT dedup_key, queue_id FROM entries WHERE dedup_key IN ({marks})",
                                          chunk).fetchall())
            return found

        return await self._read(fn) if wanted else {}

    async def has_dedup_key(self, key: str) -> str | None:
        return (await self.has_dedup_keys([key])).get(key)

    async def find_message_ids(self, message_ids: Sequence[str]) -> dict[str, tuple[SpoolEntry, ...]]:
        """Message-Id -> the entries carrying it, for a batch (mailbox intakes spot what they already spooled)."""
        wanted = sorted(set(message_ids))

        def fn(conn: sqlite3.Connection) -> dict[str, tuple[SpoolEntry, ...]]:
            found: dict[str, list[SpoolEntry]] = {}
            for marks, part in _in_chunks(wanted):
                rows = conn.execute(f"SELECT {_COLUMNS} FROM entries WHERE message_id IN ({marks}) "
                                    "ORDER BY received_at", part).fetchall()
                for row in rows:
                    entry = entry_from_row(row)
                    found.setdefault(entry.message_id or "", []).append(entry)
            return {k: tuple(v) for k, v in found.items()}

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

"""The one thread that writes to the SQLite spool and groups commits (see the package docstring)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from gateway.spool.base import PUT_COLUMNS, PutRow, SpoolError
from gateway.spool.sqlite.schema import in_chunks

T = TypeVar("T")

_INSERT_ENTRY = f"INSERT INTO entries ({', '.join(PUT_COLUMNS)}) VALUES "
_INSERT_MESSAGE = "INSERT INTO messages (queue_id, raw) VALUES "
_ENTRY_VALUES = "(" + ",".join("?" * len(PUT_COLUMNS)) + ")"
_Row = PutRow
_MAX_ROWS_PER_INSERT = 256


def _max_params(conn: sqlite3.Connection) -> int:
    # 999 before SQLite 3.32, 32766 after; the connection knows its own.
    return int(conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))


def _insert_batch(conn: sqlite3.Connection, rows: Sequence[_Row]) -> list[tuple[str, bool] | BaseException]:
    """Insert every row with executemany; a ledger key already stored (or repeated in the batch) yields
    (existing queue_id, False). Raises sqlite3.Error for the caller to fall back to `_insert_each`."""
    keys = [key for row, _raw, key in rows if key is not None and not isinstance(row, BaseException)]
    known: dict[str, str] = {}
    for marks, chunk in in_chunks(keys):
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
    one set of statements (see `GroupCommitWriter._commit`).
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


class GroupCommitWriter:
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

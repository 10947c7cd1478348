"""The SQLite spool file: its schema and migrations, connections, and the limit on statement parameters."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gateway.spool.base import (
    ADDED_COLUMNS,
    ENTRY_COLUMNS,
    SCHEMA_VERSION,
)

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
# SCHEMA is the first version; the columns added since (base.ADDED_COLUMNS) are added by `migrate`, for a new
# spool as for an old one, so there is one path to test.
FIRST_SCHEMA_VERSION = 1

COLUMNS = ", ".join(ENTRY_COLUMNS)


def migrate(conn: sqlite3.Connection) -> None:
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


_MAX_PARAMS = 500  # values per IN (...): well under SQLite's bound-parameter limit


def in_chunks(values: Sequence[Any]) -> Iterator[tuple[str, list[Any]]]:
    """("?,?,…", chunk) for each slice of `values`, for `... IN (%s)` statements."""
    for i in range(0, len(values), _MAX_PARAMS):
        chunk = list(values[i:i + _MAX_PARAMS])
        yield ",".join("?" * len(chunk)), chunk

"""The durable queue. `open_spool(config)` returns the configured backend (SQLite by default)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from gateway.config import Config
from gateway.spool.base import (
    Direction,
    Envelope,
    InvalidTransition,
    LeaseLost,
    PutItem,
    RecoveryReport,
    Spool,
    SpoolEntry,
    SpoolError,
    SpoolUnavailable,
    State,
    UnknownEntry,
    new_queue_id,
)
from gateway.spool.sqlite import SqliteSpool

__all__ = [
    "Direction", "Envelope", "InvalidTransition", "LeaseLost", "PutItem", "RecoveryReport", "Spool", "SpoolEntry",
    "SpoolError", "SpoolUnavailable", "SqliteSpool", "State", "UnknownEntry", "new_queue_id", "open_spool",
    "opened_spool", "spool_location",
]


async def open_spool(config: Config, *, daemon: bool = False) -> Spool:
    """The configured spool. `daemon`: this process is a gateway that claims work (PostgreSQL: it takes its
    instance name, renews its leases, listens for new mail and may hold mailbox locks)."""
    sc = config.spool
    if sc.backend == "postgres":
        try:
            from gateway.spool.postgres import PostgresSpool
        except ImportError as exc:  # asyncpg is an optional dependency
            raise SpoolError(f"spool backend postgres needs asyncpg: pip install 'mailgw[postgres]' ({exc})") from exc
        return await PostgresSpool.open(
            sc.dsn(), schema=sc.db_schema, instance=sc.instance, daemon=daemon, lease=sc.lease,
            pool_size=sc.pool_size, connect_timeout=sc.connect_timeout, statement_timeout=sc.statement_timeout,
            max_batch=sc.max_batch, commit_window=sc.commit_window, crash_limit=config.delivery.crash_limit)
    return await SqliteSpool.open(config.spool_path, max_batch=sc.max_batch, commit_window=sc.commit_window)


@contextlib.asynccontextmanager
async def opened_spool(config: Config) -> AsyncIterator[Spool]:
    """The configured spool for the length of an `async with` block (a command's): closed however it ends."""
    spool = await open_spool(config)
    try:
        yield spool
    finally:
        await spool.close()


def spool_location(config: Config) -> str:
    """Where the spool is, for logs and messages: never the DSN's password."""
    if config.spool.backend == "postgres":
        from gateway.spool.postgres.connection import describe_dsn

        try:
            return f"{describe_dsn(config.spool.dsn())} (schema {config.spool.db_schema})"
        except Exception:
            return f"postgres (schema {config.spool.db_schema})"
    return str(config.spool_path)

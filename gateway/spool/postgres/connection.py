"""Connecting to PostgreSQL: session settings, which errors mean "the database is not there now", and a DSN
description that is safe to log (never the password)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from asyncpg import exceptions as pgx

from gateway.logs import get_logger
from gateway.spool.base import SpoolUnavailable

log = get_logger("mailgw.spool")

# A dead peer (host gone, cable pulled) is noticed by the server within about idle + interval x count seconds:
# then its backend exits and releases that session's advisory locks, so another gateway takes the mailbox.
KEEPALIVE = {"tcp_keepalives_idle": "15", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3"}


def server_settings(statement_timeout: float) -> dict[str, str]:
    """Sent with the start-up packet (no extra round trip)."""
    ms = str(int(statement_timeout * 1000))
    return {
        "application_name": "mailgw",
        # A 250 is only said after the commit is flushed, whatever the database or role default says.
        "synchronous_commit": "on",
        # No statement may hold row locks (claims) forever; a transaction left open by a stuck client neither.
        "statement_timeout": ms,
        "idle_in_transaction_session_timeout": str(int(statement_timeout * 2000)),
        **KEEPALIVE,
    }


def connect_kwargs(dsn: str, *, connect_timeout: float, statement_timeout: float) -> dict[str, Any]:
    return {"dsn": dsn, "timeout": connect_timeout, "command_timeout": statement_timeout + 5,
            "server_settings": server_settings(statement_timeout)}


async def connect(dsn: str, *, connect_timeout: float, statement_timeout: float) -> Any:
    """One connection outside the pool (LISTEN, advisory locks, migrations)."""
    return await asyncpg.connect(**connect_kwargs(dsn, connect_timeout=connect_timeout,
                                                  statement_timeout=statement_timeout))


def is_unavailable(exc: BaseException) -> bool:
    """True for errors that say the database cannot be used now (down, restarting, unreachable, overloaded, a
    timeout) rather than that this statement or its data is wrong."""
    if isinstance(exc, OSError | TimeoutError | pgx.PostgresConnectionError | pgx.OperatorInterventionError
                  | pgx.InsufficientResourcesError | pgx.CannotConnectNowError):
        return True
    # "cannot switch to state …; another operation is in progress": what asyncpg sometimes raises instead of
    # "connection is closed" when the server ends a session mid-statement (MagicStack/asyncpg#1069).
    if isinstance(exc, pgx.InternalClientError):
        return True
    # "connection is closed", "pool is closing" …; asyncpg's DataError (bad input for a parameter) is also an
    # InterfaceError, but a ValueError too.
    return isinstance(exc, pgx.InterfaceError) and not isinstance(exc, ValueError)


def unavailable(exc: BaseException) -> SpoolUnavailable:
    text = str(exc) or type(exc).__name__
    return SpoolUnavailable(f"spool database unavailable: {text}")


def describe_dsn(dsn: str) -> str:
    """postgresql://host:port/database, for logs: no user, no password, no query parameters."""
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme or 'postgresql'}://{host}{port}{parts.path or '/'}"
    except ValueError:
        return "postgresql://(unparseable DSN)"


class Health:
    """Whether the database answered the last statement; an outage is logged once when it starts and once when
    it ends, not once per statement."""

    def __init__(self) -> None:
        self.down_since: float | None = None

    def down(self, exc: BaseException) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.error("spool.unavailable", error=str(exc) or type(exc).__name__)

    def up(self) -> None:
        if self.down_since is not None:
            log.warning("spool.available", down_for=round(time.monotonic() - self.down_since, 1))
            self.down_since = None


@contextlib.asynccontextmanager
async def checked_out(acquire: Callable[[], contextlib.AbstractAsyncContextManager[Any]]) -> AsyncIterator[Any]:
    """A pooled connection that goes back to the pool only in a known state: one that failed like a dead
    session, or whose statement was cancelled half-way, is terminated (the pool opens a new one)."""
    async with acquire() as conn:
        try:
            yield conn
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) or is_unavailable(exc):
                with contextlib.suppress(Exception):  # the pool may have taken a closed one back already
                    conn.terminate()
            raise

"""The durable queue. `open_spool(config)` returns the configured backend (SQLite by default)."""

from __future__ import annotations

from gateway.config import Config
from gateway.spool.base import (
    Direction,
    Envelope,
    InvalidTransition,
    PutItem,
    RecoveryReport,
    Spool,
    SpoolEntry,
    SpoolError,
    State,
    UnknownEntry,
    new_queue_id,
)
from gateway.spool.sqlite import SqliteSpool

__all__ = [
    "Direction", "Envelope", "InvalidTransition", "PutItem", "RecoveryReport", "Spool", "SpoolEntry", "SpoolError",
    "SqliteSpool", "State", "UnknownEntry", "new_queue_id", "open_spool",
]


async def open_spool(config: Config) -> SqliteSpool:
    return await SqliteSpool.open(config.spool_path, max_batch=config.spool.max_batch,
                                  commit_window=config.spool.commit_window)

"""Outbound claims take turns between sender domains (one Odoo instance each), each in arrival order: a mailing of
thousands from one instance does not hold back the other's mail."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from gateway.spool import Direction, Envelope


async def test_claims_round_robin_between_sender_domains(spool_opener: Callable[[], Awaitable[Any]]) -> None:
    spool = await spool_opener()  # SQLite and PostgreSQL
    try:
        ids: dict[str, list[str]] = {"a": [], "b": []}
        for i in range(50):  # instance A's mailing arrives first
            env = Envelope(mail_from="bounce@a.example", rcpt_tos=(f"r{i}@x.test",), intake="submission",
                           received_at=1000.0 + i)
            ids["a"].append((await spool.put(env, b"x", direction=Direction.OUTBOUND))[0])
        for i in range(3):  # then three messages of instance B
            env = Envelope(mail_from="Bounce@B.example", rcpt_tos=(f"s{i}@x.test",), intake="submission",
                           received_at=2000.0 + i)
            ids["b"].append((await spool.put(env, b"x", direction=Direction.OUTBOUND))[0])
        first = await spool.claim(Direction.OUTBOUND, "w", limit=6)
        claimed = {e.queue_id for e in first}
        assert claimed == set(ids["a"][:3]) | set(ids["b"])  # three turns each, oldest first within a sender
        rest = await spool.claim(Direction.OUTBOUND, "w", limit=100)
        assert [e.queue_id for e in rest] == ids["a"][3:]
    finally:
        await spool.close()

"""Spool behaviour on a real SQLite file (fast: tmp_path, no sockets)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gateway.spool import Direction, Envelope, InvalidTransition, SqliteSpool, State, new_queue_id


def env(**kw: object) -> Envelope:
    base: dict[str, object] = {"mail_from": "a@example.org", "rcpt_tos": ("b@example.com",), "intake": "smtp"}
    base.update(kw)
    return Envelope(**base)  # type: ignore[arg-type]


async def test_put_get_raw_roundtrip(tmp_path: Path) -> None:
    spool = await SqliteSpool.open(tmp_path / "s.db")
    raw = b"Subject: x\r\n\r\n\xff\x00body\r\n"
    qid, created = await spool.put(env(), raw, message_id="<m@x>")
    assert created
    entry = await spool.get(qid)
    assert entry is not None and entry.state == State.RECEIVED and entry.message_id == "<m@x>"
    assert await spool.raw(qid) == raw
    await spool.close()


async def test_transition_table_enforced(tmp_path: Path) -> None:
    spool = await SqliteSpool.open(tmp_path / "s.db")
    qid, _ = await spool.put(env(), b"x")
    await spool.transition(qid, State.ROUTED)
    await spool.transition(qid, State.DELIVERED)
    with pytest.raises(InvalidTransition):
        await spool.transition(qid, State.ROUTED)
    out, _ = await spool.put(env(), b"x", direction=Direction.OUTBOUND)
    with pytest.raises(InvalidTransition):
        await spool.transition(out, State.DELIVERED)
    await spool.close()


async def test_concurrent_puts_are_grouped(tmp_path: Path) -> None:
    spool = await SqliteSpool.open(tmp_path / "s.db")
    ids = await asyncio.gather(*(spool.put(env(), b"m%d" % i) for i in range(200)))
    assert len({q for q, _ in ids}) == 200
    # 200 writers at once must not cost 200 commits.
    assert spool.stats["commit_batches"] < 200
    assert len(await spool.list()) == 200
    await spool.close()


async def test_dedup_key_returns_existing(tmp_path: Path) -> None:
    spool = await SqliteSpool.open(tmp_path / "s.db")
    a = await spool.put(env(intake="imap"), b"x", dedup_key="imap:box:1:7")
    b = await spool.put(env(intake="imap"), b"x", dedup_key="imap:box:1:7")
    assert a[1] and not b[1] and a[0] == b[0]
    assert len(await spool.list()) == 1
    await spool.close()


async def test_claim_due_in_arrival_order_and_recover(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    spool = await SqliteSpool.open(path)
    now = time.time()
    ids = [(await spool.put(env(received_at=now + i), b"x"))[0] for i in range(3)]
    claimed = await spool.claim(Direction.INBOUND, "w1", limit=10, now=now + 10)
    assert [e.queue_id for e in claimed] == ids
    assert await spool.claim(Direction.INBOUND, "w2", limit=10, now=now + 10) == []
    await spool.close()
    # The process "died" holding the claims: each recovery counts a crash; the third parks it.
    for round_ in range(3):
        spool = await SqliteSpool.open(path)
        report = await spool.recover(crash_limit=3)
        if round_ < 2:
            assert sorted(report.released) == sorted(ids)
            await spool.claim(Direction.INBOUND, "w", limit=10, now=now + 10)
        else:
            assert sorted(report.parked) == sorted(ids)
            entry = await spool.get(ids[0])
            assert entry is not None and entry.state == State.FAILED and "died 3 times" in (entry.last_error or "")
        await spool.close()


async def test_deferred_not_claimed_before_due_and_wake(tmp_path: Path) -> None:
    spool = await SqliteSpool.open(tmp_path / "s.db")
    qid, _ = await spool.put(env(), b"x")
    await spool.claim(Direction.INBOUND, "w", limit=1)
    later = time.time() + 3600
    await spool.transition(qid, State.DEFERRED, error="odoo down", next_attempt_at=later, count_attempt=True)
    assert await spool.claim(Direction.INBOUND, "w", limit=1) == []
    assert await spool.wake([qid]) == 1
    [entry] = await spool.claim(Direction.INBOUND, "w", limit=1)
    assert entry.attempts == 1 and entry.last_error == "odoo down"
    await spool.close()


def test_queue_ids_sort_by_time() -> None:
    a, b = new_queue_id(1000.0), new_queue_id(1001.0)
    assert a < b and len(a) == 20 and a.isalnum()

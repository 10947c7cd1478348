"""The Spool contract, on both backends: a real SQLite file (tmp_path) and a real PostgreSQL server (a private
one started for the test session, a fresh schema per test; skipped with the reason when it cannot run)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.spool import Direction, Envelope, InvalidTransition, Spool, SqliteSpool, State, UnknownEntry, new_queue_id
from gateway.spool.base import PutItem

OpenSpool = Callable[[], Awaitable[Any]]


def env(**kw: object) -> Envelope:
    base: dict[str, object] = {"mail_from": "a@example.org", "rcpt_tos": ("b@example.com",), "intake": "smtp"}
    base.update(kw)
    return Envelope(**base)  # type: ignore[arg-type]


@pytest.fixture
def open_spool(spool_opener: OpenSpool) -> OpenSpool:
    return spool_opener


async def test_put_get_raw_roundtrip(open_spool: OpenSpool) -> None:
    spool = await open_spool()
    raw = b"Subject: x\r\n\r\n\xff\x00body\r\n"
    client = {"addr": "192.0.2.7", "name": "mx.example.net", "helo": "mx.example.net", "proto": "ESMTPS"}
    qid, created = await spool.put(env(client=client), raw, message_id="<m@x>")
    assert created
    entry = await spool.get(qid)
    assert entry is not None and entry.state == State.RECEIVED and entry.message_id == "<m@x>"
    assert entry.envelope.client == client
    assert await spool.raw(qid) == raw
    await spool.close()


async def test_transition_table_enforced(open_spool: OpenSpool) -> None:
    spool = await open_spool()
    qid, _ = await spool.put(env(), b"x")
    await spool.transition(qid, State.ROUTED)
    await spool.transition(qid, State.DELIVERED)
    with pytest.raises(InvalidTransition):
        await spool.transition(qid, State.ROUTED)
    out, _ = await spool.put(env(), b"x", direction=Direction.OUTBOUND)
    with pytest.raises(InvalidTransition):
        await spool.transition(out, State.DELIVERED)
    await spool.close()


async def test_concurrent_puts_are_grouped(open_spool: OpenSpool) -> None:
    spool = await open_spool()
    ids = await asyncio.gather(*(spool.put(env(), b"m%d" % i) for i in range(200)))
    assert len({q for q, _ in ids}) == 200
    # 200 writers at once must not cost 200 commits.
    assert spool.stats["commit_batches"] < 200
    assert len(await spool.list()) == 200
    await spool.close()


async def test_dedup_key_returns_existing(open_spool: OpenSpool) -> None:
    spool = await open_spool()
    a = await spool.put(env(intake="imap"), b"x", dedup_key="imap:box:1:7")
    b = await spool.put(env(intake="imap"), b"x", dedup_key="imap:box:1:7")
    assert a[1] and not b[1] and a[0] == b[0]
    assert len(await spool.list()) == 1
    await spool.close()


async def test_claim_due_in_arrival_order_and_recover(open_spool: OpenSpool) -> None:
    spool = await open_spool()
    now = time.time()
    ids = [(await spool.put(env(received_at=now + i), b"x"))[0] for i in range(3)]
    claimed = await spool.claim(Direction.INBOUND, "w1", limit=10, now=now + 10)
    assert [e.queue_id for e in claimed] == ids
    assert await spool.claim(Direction.INBOUND, "w2", limit=10, now=now + 10) == []
    await spool.close()
    # The process "died" holding the claims: each recovery counts a crash; the third parks it.
    for round_ in range(3):
        spool = await open_spool()
        report = await spool.recover(crash_limit=3)
        if round_ < 2:
            assert sorted(report.released) == sorted(ids)
            await spool.claim(Direction.INBOUND, "w", limit=10, now=now + 10)
        else:
            assert sorted(report.parked) == sorted(ids)
            entry = await spool.get(ids[0])
            assert entry is not None and entry.state == State.FAILED and "died 3 times" in (entry.last_error or "")
        await spool.close()


async def test_deferred_not_claimed_before_due_and_wake(open_spool: OpenSpool) -> None:
    spool = await open_spool()
    qid, _ = await spool.put(env(), b"x")
    await spool.claim(Direction.INBOUND, "w", limit=1)
    later = time.time() + 3600
    await spool.transition(qid, State.DEFERRED, error="odoo down", next_attempt_at=later, count_attempt=True)
    assert await spool.claim(Direction.INBOUND, "w", limit=1) == []
    assert await spool.wake([qid]) == 1
    [entry] = await spool.claim(Direction.INBOUND, "w", limit=1)
    assert entry.attempts == 1 and entry.last_error == "odoo down"
    assert await spool.raw(qid) == b"x" and await spool.raw(qid) == b"x"  # read twice: the same bytes
    big = b"Subject: big\r\n\r\n" + b"y" * 100_000
    bid, _ = await spool.put(env(), big)
    [claimed] = await spool.claim(Direction.INBOUND, "w", limit=1)
    assert claimed.queue_id == bid and await spool.raw(bid) == big
    await spool.close()


def test_queue_ids_sort_by_time() -> None:
    a, b = new_queue_id(1000.0), new_queue_id(1001.0)
    assert a < b and len(a) == 20 and a.isalnum()


async def test_puts_of_many_callers_in_one_commit_keep_their_own_results(open_spool: OpenSpool) -> None:
    """The writer inserts the rows of every put in a batch together; each caller still gets its own answer,
    a ledger key repeated across callers is stored once, and a bad row fails alone."""
    spool = await open_spool()
    bad = PutItem(env(), b"x", direction=Direction.OUTBOUND, state=State.RECEIVED)  # not an outbound state
    calls = [
        spool.put_many([PutItem(env(), b"a", dedup_key="k1"), PutItem(env(), b"b")]),
        spool.put_many([PutItem(env(), b"c", dedup_key="k1"), bad, PutItem(env(), b"d")]),
        *[spool.put(env(), b"e%d" % i) for i in range(30)],
    ]
    first, second, *singles = await asyncio.gather(*calls)
    assert spool.stats["commit_batches"] < 32  # grouped, not one commit per caller
    (q1, c1), (_q2, c2) = first  # type: ignore[misc]
    assert c1 and c2
    dup, err, (q4, c4) = second  # type: ignore[misc]
    assert dup == (q1, False)  # the ledger key was stored by the first caller
    assert isinstance(err, InvalidTransition)
    assert c4 and await spool.raw(q4) == b"d"
    assert all(created for _q, created in singles)
    assert len(await spool.list(limit=100)) == 3 + 30
    await spool.close()


async def test_duplicate_queue_id_in_a_batch_fails_only_that_row(open_spool: OpenSpool,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast multi-row INSERT fails as a whole on a constraint; the writer redoes the rows one by one."""
    import gateway.spool.base as spool_base

    spool = await open_spool()
    ids = iter(["01AAAAAAAAAAAAAAAAAA", "01AAAAAAAAAAAAAAAAAA", "01BBBBBBBBBBBBBBBBBB"])
    monkeypatch.setattr(spool_base, "new_queue_id", lambda _now=None: next(ids))
    results = await spool.put_many([PutItem(env(), b"1"), PutItem(env(), b"2"), PutItem(env(), b"3")])
    assert results[0] == ("01AAAAAAAAAAAAAAAAAA", True)
    assert isinstance(results[1], Exception)
    assert results[2] == ("01BBBBBBBBBBBBBBBBBB", True)
    assert await spool.raw("01AAAAAAAAAAAAAAAAAA") == b"1" and await spool.raw("01BBBBBBBBBBBBBBBBBB") == b"3"
    await spool.close()


async def test_a_lone_write_that_fails_commits_nothing_and_reports_its_own_error(tmp_path: Path) -> None:
    spool = await SqliteSpool.open(tmp_path / "s.db")

    def half_done(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO meta(key, value) VALUES ('half', 'done')")
        raise ValueError("changed my mind")

    with pytest.raises(ValueError, match="changed my mind"):
        await spool._write(half_done)
    assert spool.write_sync(lambda c: c.execute("SELECT count(*) FROM meta WHERE key='half'").fetchone()[0]) == 0
    qid, created = await spool.put(env(), b"still works")
    assert created and await spool.raw(qid) == b"still works"
    await spool.close()


async def test_defer_many_moves_only_what_may_be_deferred(open_spool: OpenSpool) -> None:
    spool = await open_spool()
    a, _ = await spool.put(env(), b"a")
    b, _ = await spool.put(env(), b"b")
    parked, _ = await spool.put(env(), b"c", state=State.FAILED, last_error="bad")
    claimed = await spool.claim(Direction.INBOUND, "w", limit=10)
    assert {e.queue_id for e in claimed} == {a, b}
    until = time.time() + 3600
    moved = await spool.defer_many([a, b, parked, "01NOSUCHENTRY0000000"], next_attempt_at=until, error="waiting")
    assert sorted(moved) == sorted([a, b])
    for qid in (a, b):
        entry = await spool.get(qid)
        assert entry is not None and entry.state == State.DEFERRED and entry.last_error == "waiting"
        assert entry.attempts == 0 and entry.claimed_by is None and entry.next_attempt_at == until
    still = await spool.get(parked)
    assert still is not None and still.state == State.FAILED and still.last_error == "bad"
    assert await spool.claim(Direction.INBOUND, "w", limit=10) == []  # not due before `until`
    await spool.close()


async def test_spool_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """The spool holds mail: the database and SQLite's -wal and -shm files are 0600 (they were 0644)."""
    old = os.umask(0o022)
    try:
        spool = await SqliteSpool.open(tmp_path / "state" / "spool.sqlite3")
        await spool.put(Envelope("a@example.org", ("b@example.com",), intake="pipe"), b"Subject: x\r\n\r\nsecret\r\n")
        files = sorted(tmp_path.joinpath("state").iterdir())
        assert [f.name for f in files] == ["spool.sqlite3", "spool.sqlite3-shm", "spool.sqlite3-wal"]
        assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == dict.fromkeys(
            (f.name for f in files), "0o600")
        assert tmp_path.joinpath("state").stat().st_mode & 0o777 == 0o750
        await spool.close()
    finally:
        os.umask(old)


async def test_requeue_delete_and_reads(open_spool: OpenSpool) -> None:
    spool = await open_spool()
    a, _ = await spool.put(env(), b"a", message_id="<a@x>", dedup_key="k-a")
    b, _ = await spool.put(env(), b"b", message_id="<b@x>", state=State.FAILED, last_error="bad")
    out, _ = await spool.put(env(mail_from="bounce@example.com"), b"o", direction=Direction.OUTBOUND,
                             message_id="<a@x>")
    assert await spool.has_dedup_keys(["k-a", "k-none", "k-a"]) == {"k-a": a}
    assert await spool.has_dedup_key("k-none") is None
    found = await spool.find_message_ids(["<a@x>", "<none@x>"])
    assert sorted(e.queue_id for e in found["<a@x>"]) == sorted([a, out]) and "<none@x>" not in found
    assert await spool.counts() == {("inbound", "received"): 1, ("inbound", "failed"): 1, ("outbound", "outgoing"): 1}
    assert [e.queue_id for e in await spool.list(state=State.FAILED)] == [b]
    assert [e.queue_id for e in await spool.list(direction=Direction.OUTBOUND)] == [out]
    again = await spool.requeue(b)
    assert again.state == State.RECEIVED and again.last_error is None and again.crashes == 0
    assert {e.queue_id for e in await spool.claim(Direction.INBOUND, "w", limit=10)} == {a, b}
    await spool.release(a)
    assert [e.queue_id for e in await spool.claim(Direction.INBOUND, "w2", limit=10)] == [a]
    await spool.delete(a)
    assert await spool.get(a) is None
    with pytest.raises(UnknownEntry):
        await spool.raw(a)
    with pytest.raises(UnknownEntry):
        await spool.delete(a)
    with pytest.raises(UnknownEntry):
        await spool.transition(a, State.DELIVERED)
    await spool.close()


async def _copy(src: Spool, dst: Spool) -> tuple[int, int]:
    from gateway.spool.transfer import copy_entries

    report = await copy_entries(src, dst, size=2)
    return report.added, report.skipped


async def test_entries_move_between_spools_idempotently(open_spool: OpenSpool, tmp_path: Path) -> None:
    """`mailgw spool export|import`: every column and the raw bytes come over, queue ids kept, claims cleared;
    running it twice adds nothing; a ledger key already stored under another id is skipped."""
    src = await SqliteSpool.open(tmp_path / "source.db")
    ids = [(await src.put(env(source={"mailbox": "m", "uid": i}), b"raw %d\x00\xff" % i, message_id=f"<{i}@x>",
                          dedup_key=f"imap:m:1:{i}"))[0] for i in range(5)]
    await src.claim(Direction.INBOUND, "w", limit=1)
    await src.transition(ids[1], State.DEFERRED, error="later", next_attempt_at=time.time() + 60,
                         rcpt_status={"b@example.com": {"state": "deferred"}}, count_attempt=True)
    dst = await open_spool()
    clash, _ = await dst.put(env(), b"other", dedup_key="imap:m:1:4")
    assert await _copy(src, dst) == (4, 1)
    assert await _copy(src, dst) == (0, 5)
    for i, qid in enumerate(ids[:4]):
        a, b = await src.get(qid), await dst.get(qid)
        assert a is not None and b is not None
        assert b.to_dict() == a.to_dict() and b.claimed_by is None
        assert await dst.raw(qid) == b"raw %d\x00\xff" % i
    assert await dst.has_dedup_key("imap:m:1:4") == clash
    await src.close()
    await dst.close()


async def test_held_is_never_claimed_and_deleted_only_while_held(open_spool: OpenSpool) -> None:
    spool = await open_spool()
    qid, _ = await spool.put(env(), b"h", state=State.HELD, last_error="held by sender authentication")
    other, _ = await spool.put(env(), b"h2", state=State.HELD)
    assert await spool.claim(Direction.INBOUND, "w", limit=10) == []
    back = await spool.transition(qid, State.RECEIVED, next_attempt_at=time.time())
    assert back.state == State.RECEIVED
    with pytest.raises(InvalidTransition):
        await spool.delete(qid, only_in=State.HELD)  # released meanwhile: the expiry must not delete it
    await spool.delete(other, only_in=State.HELD)
    assert await spool.get(other) is None
    with pytest.raises(UnknownEntry):
        await spool.delete(other, only_in=State.HELD)
    assert [e.queue_id for e in await spool.claim(Direction.INBOUND, "w", limit=10)] == [qid]
    await spool.close()


async def test_scan_reads_everything_in_order_a_page_at_a_time(open_spool: OpenSpool) -> None:
    spool = await open_spool()
    keyed = [(1000.0 + i // 2, (await spool.put(env(received_at=1000.0 + i // 2), b"x%d" % i))[0])
             for i in range(7)]  # ties on received_at too: then the queue id decides
    ids = [q for _t, q in sorted(keyed)]
    failed, _ = await spool.put(env(received_at=999.0), b"f", state=State.FAILED)
    assert [e.queue_id async for e in spool.scan(page=3)] == [failed, *ids]
    assert [e.queue_id async for e in spool.scan(state=State.RECEIVED, page=2)] == ids
    assert [e.queue_id async for e in spool.scan(direction=Direction.OUTBOUND)] == []
    await spool.close()

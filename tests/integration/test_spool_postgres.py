"""What only the PostgreSQL spool does, against a real server (tests/pgcluster.py): several gateways on one
queue (disjoint claims, leases and their take-over, the crash counter across gateways, fenced writes, the shared
ledger, NOTIFY, mailbox locks, the instance name), migrations run concurrently, statement timeouts, and the
database going away and coming back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import structlog

from gateway.spool import Direction, Envelope, LeaseLost, SpoolUnavailable, State
from gateway.spool.postgres import PostgresSpool
from gateway.spool.postgres.control import InstanceNameInUse
from gateway.spool.postgres.schema import LATEST, MIGRATIONS, migrate
from tests.pgcluster import PgCluster, cluster_fixture
from tests.waiting import wait_until


def env(**kw: Any) -> Envelope:
    base: dict[str, Any] = {"mail_from": "a@example.org", "rcpt_tos": ("b@example.com",), "intake": "smtp"}
    base.update(kw)
    return Envelope(**base)



@pytest.fixture
def gateways(pg_spool: dict[str, str]) -> Callable[..., Any]:
    """Opens spools on the test's schema as different gateways would: `async with gateways(n, **kw) as [a, b]`."""

    @asynccontextmanager
    async def open_many(n: int = 2, *, daemon: bool = False, names: list[str] | None = None,
                        **kw: Any) -> AsyncIterator[list[PostgresSpool]]:
        spools = []
        try:
            for i in range(n):
                spools.append(await PostgresSpool.open(pg_spool["dsn"], schema=pg_spool["schema"], daemon=daemon,
                                                       instance=(names or [f"gw{j}" for j in range(n)])[i], **kw))
            yield spools
        finally:
            for s in spools:
                await s.close()

    return open_many


async def test_concurrent_migrations_apply_each_version_once(pg_spool: dict[str, str]) -> None:
    import asyncpg

    conns = [await asyncpg.connect(pg_spool["dsn"]) for _ in range(5)]
    try:
        results = await asyncio.gather(*(migrate(c, pg_spool["schema"]) for c in conns))
        assert all(after == LATEST for _before, after in results)
        assert sum(before == 0 for before, _after in results) >= 1
        rows = await conns[0].fetch(f"SELECT version FROM {pg_spool['schema']}.schema_version ORDER BY version")
        assert [r[0] for r in rows] == [v for v, _d, _s in MIGRATIONS]
    finally:
        for c in conns:
            await c.close()


async def test_two_gateways_claim_disjoint_sets_and_share_the_ledger(gateways: Callable[..., Any]) -> None:
    async with gateways(2) as (a, b):
        ids = {(await a.put(env(), b"m%d" % i))[0] for i in range(60)}
        claimed: dict[str, list[str]] = {"a": [], "b": []}

        async def drain(name: str, spool: PostgresSpool) -> None:
            while batch := await spool.claim(Direction.INBOUND, "w", limit=7):
                claimed[name] += [e.queue_id for e in batch]

        await asyncio.gather(drain("a", a), drain("b", b))
        assert set(claimed["a"]) | set(claimed["b"]) == ids
        assert not set(claimed["a"]) & set(claimed["b"])
        # One mailbox message spooled by both at once: stored once, both told its queue id.
        first, second = await asyncio.gather(a.put(env(intake="imap"), b"x", dedup_key="imap:box:1:9"),
                                             b.put(env(intake="imap"), b"x", dedup_key="imap:box:1:9"))
        assert first[0] == second[0] and sorted([first[1], second[1]]) == [False, True]
        assert await b.has_dedup_key("imap:box:1:9") == first[0]


async def test_expired_lease_is_taken_over_and_counted_as_a_crash_across_gateways(
        gateways: Callable[..., Any]) -> None:
    """Gateways that die holding a claim (no lease renewal here: daemon=False) hand it to the next one after the
    lease; the third take-over parks it (poison guard, crash_limit 3). The dead holder cannot write it any more."""
    async with gateways(4, lease=1.0, crash_limit=3) as (a, b, c, d):
        qid, _ = await a.put(env(), b"poison")
        [held] = await a.claim(Direction.INBOUND, "w", limit=5)
        assert held.queue_id == qid and held.crashes == 0
        assert await b.claim(Direction.INBOUND, "w", limit=5) == []  # leased
        await asyncio.sleep(1.1)
        with structlog.testing.capture_logs() as logs:
            [taken] = await b.claim(Direction.INBOUND, "w", limit=5)
        assert taken.crashes == 1 and taken.claimed_by == "w@gw1"
        assert any(e["event"] == "spool.taken_over" and e["previous"] == "w@gw0" for e in logs)
        with pytest.raises(LeaseLost):
            await a.transition(qid, State.DELIVERED)  # the dead holder woke up: it must not finish B's work
        with pytest.raises(LeaseLost):
            await a.transition(qid, State.DEFERRED)
        await asyncio.sleep(1.1)
        [again] = await c.claim(Direction.INBOUND, "w", limit=5)
        assert again.crashes == 2
        await asyncio.sleep(1.1)
        assert await d.claim(Direction.INBOUND, "w", limit=5) == []
        parked = await d.get(qid)
        assert parked is not None and parked.state == State.FAILED and parked.claimed_by is None
        assert "died 3 times" in (parked.last_error or "")


async def test_leases_are_renewed_while_held(gateways: Callable[..., Any]) -> None:
    async with gateways(2, daemon=True, lease=1.0) as (a, b):
        await a.put(env(), b"slow")
        [held] = await a.claim(Direction.INBOUND, "w", limit=1)
        await asyncio.sleep(2.6)  # more than two lease times: renewed every lease/4
        assert await b.claim(Direction.INBOUND, "w", limit=1) == []
        done = await a.transition(held.queue_id, State.DELIVERED)
        assert done.state == State.DELIVERED and done.claimed_by is None


async def test_recover_releases_only_the_dead_predecessors_claims(gateways: Callable[..., Any],
                                                                  pg_spool: dict[str, str]) -> None:
    async with gateways(2, daemon=True, names=["gw-a", "gw-b"]) as (a, b):
        x, _ = await a.put(env(), b"x")
        y, _ = await a.put(env(), b"y")
        [cx] = await a.claim(Direction.INBOUND, "w", limit=1)
        [cy] = await b.claim(Direction.INBOUND, "w", limit=1)
        assert (cx.queue_id, cy.queue_id) == (x, y)
        # gw-a dies (its claims stay) and restarts under the same name; gw-b lives on.
        a._renewer and a._renewer.cancel()
        await a._control.close()  # type: ignore[union-attr]
        restarted = await PostgresSpool.open(pg_spool["dsn"], schema=pg_spool["schema"], instance="gw-a",
                                             daemon=True)
        try:
            report = await restarted.recover(crash_limit=3)
            assert report.released == (x,) and not report.parked
            entry = await restarted.get(x)
            assert entry is not None and entry.claimed_by is None and entry.crashes == 1
            still = await restarted.get(y)
            assert still is not None and still.claimed_by == "w@gw-b"
        finally:
            await restarted.close()


async def test_an_instance_name_is_held_by_one_live_gateway(pg_spool: dict[str, str]) -> None:
    a = await PostgresSpool.open(pg_spool["dsn"], schema=pg_spool["schema"], instance="mx1", daemon=True)
    with pytest.raises(InstanceNameInUse):
        await PostgresSpool.open(pg_spool["dsn"], schema=pg_spool["schema"], instance="mx1", daemon=True)
    await a.close()
    b = await PostgresSpool.open(pg_spool["dsn"], schema=pg_spool["schema"], instance="mx1", daemon=True)
    await b.close()


async def test_new_mail_wakes_the_other_gateways(gateways: Callable[..., Any]) -> None:
    async with gateways(2, daemon=True) as (listening, storing):
        heard: list[Direction] = []
        listening.add_listener(heard.append)
        await storing.put(env(), b"due now")
        await wait_until(lambda: Direction.INBOUND in heard, "NOTIFY", 10)
        heard.clear()
        await storing.put(env(), b"o", direction=Direction.OUTBOUND)
        await wait_until(lambda: Direction.OUTBOUND in heard, "NOTIFY outbound", 10)
        heard.clear()
        await storing.put(env(), b"later", state=State.DEFERRED, next_attempt_at=time.time() + 600)
        await storing.put(env(), b"now")  # a later insert that notifies: the deferred one did not
        await wait_until(lambda: heard, "NOTIFY", 10)
        assert heard == [Direction.INBOUND]


async def test_one_gateway_polls_a_mailbox_and_another_takes_over_when_its_session_ends(
        gateways: Callable[..., Any], pg_cluster: PgCluster) -> None:
    async with gateways(2, daemon=True) as (a, b):
        la, lb = a.mailbox_lock("imap:support"), b.mailbox_lock("imap:support")
        other = b.mailbox_lock("imap:sales")
        assert await la.acquire() and await la.acquire()
        assert not await lb.acquire()
        assert await other.acquire()  # another mailbox is another lock
        # The holder's session dies (its host vanished; PostgreSQL ends it): the lock is released and the
        # holder is told at once.
        pid = await a._control._conn.fetchval("SELECT pg_backend_pid()")  # type: ignore[union-attr]
        pg_cluster.psql(f"SELECT pg_terminate_backend({pid})")
        await wait_until(lambda: la.lost.is_set(), "the holder to notice", 10)
        await wait_until(lb.acquire, "the take-over", 10)
        assert not await la.acquire()
        await lb.release()
        await wait_until(la.acquire, "the first gateway's control session to come back", 20)


async def test_a_statement_timeout_leaves_no_claim(gateways: Callable[..., Any], pg_spool: dict[str, str]) -> None:
    import asyncpg

    async with gateways(1, statement_timeout=0.5) as [spool]:
        qid, _ = await spool.put(env(), b"x")
        blocker = await asyncpg.connect(pg_spool["dsn"])
        try:
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute(f"LOCK TABLE {pg_spool['schema']}.entries IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(SpoolUnavailable):
                await spool.claim(Direction.INBOUND, "w", limit=5)
            await tx.rollback()
        finally:
            await blocker.close()
        entry = await spool.get(qid)
        assert entry is not None and entry.claimed_by is None
        assert [e.queue_id for e in await spool.claim(Direction.INBOUND, "w", limit=5)] == [qid]


# -- the database goes away ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def own_cluster() -> Iterator[PgCluster]:
    """A server these tests may stop and start without disturbing the others."""
    yield from cluster_fixture("faults")


async def test_database_restart_fails_writes_cleanly_then_resumes_without_reopening(own_cluster: PgCluster) -> None:
    spool = await PostgresSpool.open(own_cluster.dsn("faults"), schema="restart", instance="gw", daemon=True,
                                     lease=1.0, connect_timeout=2)
    try:
        lock = spool.mailbox_lock("pop3:legacy")
        assert await lock.acquire()
        kept, _ = await spool.put(env(), b"before")
        [held] = await spool.claim(Direction.INBOUND, "w", limit=1)
        with structlog.testing.capture_logs() as logs:
            await asyncio.to_thread(own_cluster.stop)
            for _ in range(3):  # nothing is acknowledged while it is down, and the outage is logged once
                with pytest.raises(SpoolUnavailable):
                    await spool.put(env(), b"during")
            with pytest.raises(SpoolUnavailable):
                await spool.claim(Direction.INBOUND, "w", limit=1)
            with pytest.raises(SpoolUnavailable):
                await spool.transition(held.queue_id, State.DELIVERED)  # outcome unknown to the worker
            await wait_until(lambda: lock.lost.is_set(), "the mailbox lock to be reported lost", 10)
            await asyncio.to_thread(own_cluster.start)
            after, created = await spool.put(env(), b"after")
        assert created and await spool.raw(after) == b"after"
        assert [e["event"] for e in logs].count("spool.unavailable") == 1
        assert "spool.available" in [e["event"] for e in logs]
        # The claim whose transition failed is released once the database answers (not left claimed forever).
        async def released() -> bool:
            entry = await spool.get(held.queue_id)
            return entry is not None and entry.claimed_by is None and entry.crashes == 0

        await wait_until(released, "the abandoned claim to be released", 10)
        assert kept == held.queue_id
        await wait_until(lock.acquire, "the mailbox lock again", 20)
    finally:
        await spool.close()


async def test_open_when_the_database_is_unreachable_raises_unavailable_without_the_password() -> None:
    from tests.pgcluster import free_port

    dsn = f"postgresql://mailgw:s3cret-pw@127.0.0.1:{free_port()}/nowhere"
    with pytest.raises(SpoolUnavailable) as exc:
        await PostgresSpool.open(dsn, connect_timeout=2)
    assert "s3cret-pw" not in str(exc.value)


async def test_a_wrong_password_is_a_spool_error_that_names_no_secret(pg_spool: dict[str, str]) -> None:
    from gateway.spool import SpoolError

    dsn = pg_spool["dsn"].replace("postgres:", "postgres:wrong-", 1)
    with pytest.raises(SpoolError) as exc:
        await PostgresSpool.open(dsn, schema=pg_spool["schema"])
    assert not isinstance(exc.value, SpoolUnavailable)  # not "try later": the operator has to fix it
    assert "password authentication failed" in str(exc.value) and "wrong-" not in str(exc.value)


async def test_a_spool_of_an_older_version_is_migrated_on_open(pg_spool: dict[str, str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A spool an older mailgw created (schema version 1, before the XFORWARD client column): opening it with
    this one adds what is missing; its entries are read as they were."""
    import asyncpg

    from gateway.spool.postgres import schema

    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:1])
    monkeypatch.setattr(schema, "LATEST", 1)
    conn = await asyncpg.connect(pg_spool["dsn"])
    try:
        assert await schema.migrate(conn, pg_spool["schema"]) == (0, 1)
        await conn.execute(f"INSERT INTO {pg_spool['schema']}.entries (queue_id, direction, state, mail_from, "
                           "rcpt_tos, intake, size, received_at, updated_at, next_attempt_at) VALUES "
                           "('01OLDOLDOLDOLDOLDOLD', 'inbound', 'received', 'a@x', '[\"b@example.com\"]', 'smtp', 1, "
                           "1, 1, 1)")
    finally:
        await conn.close()
    monkeypatch.undo()
    spool = await PostgresSpool.open(pg_spool["dsn"], schema=pg_spool["schema"])
    try:
        assert spool.migrated == (1, LATEST)
        entry = await spool.get("01OLDOLDOLDOLDOLDOLD")
        assert entry is not None and entry.envelope.client is None and entry.envelope.rcpt_tos == ("b@example.com",)
    finally:
        await spool.close()

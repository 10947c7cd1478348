"""Pop3Poller against a real Dovecot: implicit TLS and STLS, UIDL ledger, DELE only after the spool commit,
oversized and broken mail. Real sockets on 127.0.0.1; no mocks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from gateway.config import Config, parse_config
from gateway.intake.mailbox import pop3_key
from gateway.intake.pop import Pop3Client, Pop3Poller
from gateway.spool import Envelope, SqliteSpool, State
from tests.integration.dovecot import DovecotServer, MailUser, mailbox_config_dict, message, preload_maildir
from tests.integration.test_imap import append, running
from tests.waiting import wait_until


@asynccontextmanager
async def polling(dovecot: DovecotServer, user: MailUser, tmp_path: Path, **overrides: Any
                  ) -> AsyncIterator[tuple[Pop3Poller, SqliteSpool, Config]]:
    overrides.setdefault("poll_interval", "0.2s")
    config = parse_config(mailbox_config_dict(dovecot, user, tmp_path / "state", protocol="pop3", name="legacy",
                                              **overrides))
    async with running(lambda c, s: Pop3Poller(c.pop3[0], c, s), config) as (poller, spool):
        yield poller, spool, config


async def server_count(dovecot: DovecotServer, user: MailUser) -> int:
    return await asyncio.to_thread(dovecot.pop3_count, user)


async def test_drain_over_implicit_tls_deletes_after_commit(dovecot: DovecotServer, tmp_path: Path) -> None:
    user = dovecot.add_user()
    raws = [message(i) for i in range(6)]
    raws.append(message(6) + b".leading dot\r\n.\r\n..\r\nlast line\r\n")  # dot-stuffing round trip
    for raw in raws:
        await append(dovecot, user, raw)
    async with polling(dovecot, user, tmp_path) as (poller, spool, _):
        poller.session_limit = 3  # several sessions: each QUIT commits its DELEs
        await wait_until(lambda: poller.stats["deleted"] == 7, what="7 deleted")
        assert poller.stats["fetched"] == 7 and poller.stats["sessions"] >= 3
        await append(dovecot, user, message(8))  # a later arrival, at the next poll
        await wait_until(lambda: poller.stats["deleted"] == 8, what="next poll")
        entries = await spool.list()
        stored = [await spool.raw(x.queue_id) for x in entries[:7]]
    assert await server_count(dovecot, user) == 0
    assert len(entries) == 8 and all(e.state == State.RECEIVED for e in entries)
    e = entries[0]
    assert e.envelope.intake == "pop3" and e.envelope.source is not None
    assert e.envelope.source["mailbox"] == "legacy" and e.envelope.source["uidl"]
    assert e.envelope.rcpt_tos == ("support@example.test",) and e.envelope.mail_from == "sender0@sender.example"
    assert sorted(stored) == sorted(raws)


async def test_stls_on_the_plain_port(dovecot: DovecotServer, tmp_path: Path) -> None:
    user = dovecot.add_user()
    await append(dovecot, user, message(1))
    async with polling(dovecot, user, tmp_path, tls="starttls", port=dovecot.pop3_port) as (poller, _spool, _):
        await wait_until(lambda: poller.stats["deleted"] == 1, what="message over STLS")
    client = Pop3Client("127.0.0.1", dovecot.pop3_port, ssl_context=None, timeout=5, max_message_size=1000)
    await client.connect()
    assert "STLS" in await client.capa()
    await client.stls(dovecot.ssl_context())
    assert (client.tls_info() or "").startswith("TLS")
    await client.login(user.address, user.password)
    assert await client.stat() == (0, 0)
    await client.quit()


async def test_ledger_makes_a_replay_after_a_lost_quit_a_no_op(dovecot: DovecotServer, tmp_path: Path) -> None:
    user = dovecot.add_user()
    raw = message(1)
    await append(dovecot, user, raw)
    client = Pop3Client("127.0.0.1", dovecot.pop3s_port, ssl_context=dovecot.ssl_context(), timeout=5,
                        max_message_size=10**6)
    await client.connect()
    await client.login(user.address, user.password)
    uidl = await client.uidl()
    await client.quit()
    assert uidl is not None
    # As if the gateway died after the commit, before its QUIT: spooled, still on the server.
    config = parse_config(mailbox_config_dict(dovecot, user, tmp_path / "state", protocol="pop3", name="legacy"))
    spool = await SqliteSpool.open(config.spool_path)
    qid, _ = await spool.put(Envelope("", ("support@example.test",), intake="pop3"), raw,
                             dedup_key=pop3_key("legacy", uidl[1]))
    await spool.close()
    async with polling(dovecot, user, tmp_path) as (poller, spool, _):
        await wait_until(lambda: poller.stats["deleted"] == 1, what="delete of the spooled message")
        assert poller.stats["refetched"] == 1 and poller.stats["fetched"] == 0
        assert [e.queue_id for e in await spool.list()] == [qid]
    assert await server_count(dovecot, user) == 0


async def test_oversized_left_on_server_broken_parked(dovecot: DovecotServer, tmp_path: Path) -> None:
    user = dovecot.add_user()
    for raw in (message(1, size=20_000), b"garbage first line\r\n\r\nbody\r\n", message(3)):
        await append(dovecot, user, raw)
    async with polling(dovecot, user, tmp_path, max_message_size="10KB") as (poller, spool, _):
        await wait_until(lambda: poller.stats["deleted"] == 2, what="two deleted")
        await wait_until(lambda: poller.stats["sessions"] >= 3, what="more polls")
        assert poller.stats["oversized"] == 1 and poller.stats["parked"] == 1
        entries = {e.envelope.source["msgno"]: e for e in await spool.list() if e.envelope.source}
    assert len(entries) == 3
    assert entries[1].state == State.FAILED and "max_message_size" in (entries[1].last_error or "")
    assert entries[2].state == State.FAILED and "no header section" in (entries[2].last_error or "")
    assert entries[3].state == State.RECEIVED
    assert await server_count(dovecot, user) == 1  # the oversized one waits for a human


async def test_a_refused_message_is_recorded_then_spooled_when_the_server_returns_it(dovecot: DovecotServer,
                                                                                   tmp_path: Path) -> None:
    """RETR -ERR: the message stays on the server with a placeholder entry (reported once). The placeholder is
    not "stored": when the server returns the message again (a later session, or after a restart), its bytes are
    spooled in place of the placeholder and only then is it deleted."""
    user = dovecot.add_user()
    raws = [message(1), message(2), message(3)]
    preload_maildir(dovecot, user, raws)
    await server_count(dovecot, user)  # Dovecot indexes the sizes now: later it refuses RETR 2, not the login
    maildir = dovecot.base / "mail" / user.address / "Maildir"
    [second] = [p for p in maildir.rglob("*,S=*") if ".M1P" in p.name]
    second.chmod(0)
    async with polling(dovecot, user, tmp_path) as (poller, spool, _):
        await wait_until(lambda: poller.stats["deleted"] == 2 and poller.stats["unreadable"] == 1, what="2 of 3")
        await wait_until(lambda: poller.stats["sessions"] >= 3, what="more polls")
        assert poller.stats["unreadable"] == 1  # reported once, asked for again at every session
        [placeholder] = await spool.list(state=State.FAILED)
        assert placeholder.size == 0 and "refused RETR" in (placeholder.last_error or "")
    assert await server_count(dovecot, user) == 1
    second.chmod(0o600)
    async with polling(dovecot, user, tmp_path) as (poller, spool, _):
        await wait_until(lambda: poller.stats["deleted"] == 1, what="the message, now returned")
        assert poller.stats["fetched"] == 1 and poller.stats["refetched"] == 0
        assert await spool.get(placeholder.queue_id) is None
        stored = sorted([await spool.raw(e.queue_id) for e in await spool.list()])
        assert stored == sorted(raws) and not await spool.list(state=State.FAILED)
    assert await server_count(dovecot, user) == 0

"""ImapPoller against a real Dovecot over implicit TLS: push, catch-up, after-modes, reconnect, UIDVALIDITY,
oversized and broken mail, crash-between-commit-and-flag. Real sockets on 127.0.0.1; no mocks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gateway.config import Config, parse_config
from gateway.intake.imap import ImapPoller, uid_set
from gateway.intake.mailbox import MailboxPoller, imap_key
from gateway.spool import Envelope, SpoolEntry, SqliteSpool, State
from tests.integration.dovecot import DovecotServer, MailUser, mailbox_config_dict, message
from tests.waiting import wait_until

P = TypeVar("P", bound=MailboxPoller)


@asynccontextmanager
async def running(make: Callable[[Config, SqliteSpool], P], config: Config, backoff: float = 0.2
                  ) -> AsyncIterator[tuple[P, SqliteSpool]]:
    """A poller (IMAP or POP3) running on its own spool; stopped, and the spool closed, on the way out."""
    spool = await SqliteSpool.open(config.spool_path)
    poller = make(config, spool)
    poller.backoff_initial = backoff  # tests restart Dovecot: reconnect quickly
    task = asyncio.create_task(poller.run())
    try:
        yield poller, spool
    finally:
        await poller.stop()
        await asyncio.wait_for(task, 15)
        await spool.close()


@asynccontextmanager
async def polling(dovecot: DovecotServer, user: MailUser, tmp_path: Path, backoff: float = 0.2, **overrides: Any
                  ) -> AsyncIterator[tuple[ImapPoller, SqliteSpool, Config]]:
    config = parse_config(mailbox_config_dict(dovecot, user, tmp_path / "state", **overrides))
    async with running(lambda c, s: ImapPoller(c.imap[0], c, s), config, backoff) as (poller, spool):
        yield poller, spool, config


async def count(spool: SqliteSpool, state: State | None = None) -> int:
    return len(await spool.list(state=state))


async def append(dovecot: DovecotServer, user: MailUser, raw: bytes, **kw: Any) -> None:
    await asyncio.to_thread(dovecot.append, user, raw, **kw)


def test_uid_set_compresses_ranges() -> None:
    assert uid_set([9, 1, 2, 3, 7, 10, 2]) == "1:3,7,9:10"
    assert uid_set([5]) == "5"


async def test_idle_push_spools_then_marks_seen(dovecot: DovecotServer, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    user = dovecot.add_user()
    async with polling(dovecot, user, tmp_path) as (poller, spool, _):
        await wait_until(lambda: poller.idle_active, what="IDLE")
        raw = message(1, to="Sales <sales@example.test>, someone@elsewhere.example",
                      extra_headers="Delivered-To: support@example.test\r\n")
        t0 = time.monotonic()
        await append(dovecot, user, raw)
        await wait_until(lambda: count(spool), what="the pushed message in the spool")
        elapsed = time.monotonic() - t0
        await wait_until(lambda: poller.stats["flagged"] == 1, what="\\Seen")
        with capsys.disabled():
            print(f"\nIMAP IDLE push: APPEND on another connection -> spool commit in {elapsed * 1000:.0f} ms")
        assert elapsed < 5.0  # the issue asks for < 1 s; measured figure printed above
        [entry] = await spool.list()
        assert entry.state == State.RECEIVED
        env = entry.envelope
        assert env.intake == "imap" and env.peer == "127.0.0.1"
        assert env.mail_from == "sender1@sender.example"  # from Return-Path
        assert env.rcpt_tos == ("support@example.test", "sales@example.test")  # ours only, Delivered-To first
        assert env.source is not None
        assert env.source["mailbox"] == "support" and env.source["uid"] == 1 and env.source["rcpt_from"] == "headers"
        assert env.source["uidvalidity"] == poller.uidvalidity and env.source["instance"] == "main"
        assert entry.message_id and entry.message_id.startswith("<m1.")
        assert await spool.raw(entry.queue_id) == raw
        assert await spool.has_dedup_key(imap_key("support", poller.uidvalidity or 0, 1)) == entry.queue_id
        assert "\\Seen" in dovecot.flags(user)[1]


@pytest.mark.parametrize("after", ["seen", "move:Processed", "delete"])
async def test_catch_up_in_bounded_chunks_then_after_action(dovecot: DovecotServer, tmp_path: Path,
                                                            after: str) -> None:
    user = dovecot.add_user()
    for i in range(7):
        await append(dovecot, user, message(i))
    await append(dovecot, user, message(99), flags="\\Seen")  # already read by a human
    async with polling(dovecot, user, tmp_path, after=after, batch_size=3) as (poller, spool, _):
        expected = 7 if after == "seen" else 8  # move/delete: the folder itself is the "new" view
        await wait_until(lambda: poller.stats["flagged"] == expected, what=f"{expected} messages handled")
        await append(dovecot, user, message(7))  # and one more, by push
        await wait_until(lambda: poller.stats["flagged"] == expected + 1, what="the pushed one")
        assert await count(spool) == expected + 1
        assert poller.stats["fetched"] == expected + 1
    flags = dovecot.flags(user)
    if after == "seen":
        assert len(flags) == 9 and all("\\Seen" in f for f in flags.values())
    else:
        assert flags == {}
        if after.startswith("move:"):
            assert len(dovecot.flags(user, "Processed")) == expected + 1


async def test_poll_mode_without_idle(dovecot: DovecotServer, tmp_path: Path) -> None:
    user = dovecot.add_user()
    async with polling(dovecot, user, tmp_path, idle=False, poll_interval="0.2s") as (poller, spool, _):
        await wait_until(lambda: poller.stats["sessions"] == 1, what="connected")
        await append(dovecot, user, message(1))
        await wait_until(lambda: poller.stats["flagged"] == 1, what="polled message")
        assert not poller.idle_active and await count(spool) == 1


async def test_dovecot_restart_mid_idle_reconnects_and_catches_up(dovecot: DovecotServer, tmp_path: Path) -> None:
    user = dovecot.add_user()
    async with polling(dovecot, user, tmp_path) as (poller, spool, _):
        await append(dovecot, user, message(1))
        await wait_until(lambda: poller.stats["flagged"] == 1 and poller.idle_active, what="first message, IDLE")
        await asyncio.to_thread(dovecot.stop)
        # Mail that arrives while the gateway is disconnected (delivered by the MTA straight into the Maildir).
        from tests.integration.dovecot import preload_maildir

        await asyncio.to_thread(preload_maildir, dovecot, user, [message(2), message(3)])
        await asyncio.to_thread(dovecot.start)
        await wait_until(lambda: poller.stats["flagged"] == 3, timeout=30, what="catch-up after reconnect")
        assert poller.stats["sessions"] >= 2 and poller.stats["errors"] >= 1
        await append(dovecot, user, message(4))  # and IDLE works again
        await wait_until(lambda: poller.stats["flagged"] == 4, what="push after reconnect")
        assert await count(spool) == 4
    assert all("\\Seen" in f for f in dovecot.flags(user).values())


async def test_uidvalidity_change(dovecot: DovecotServer, tmp_path: Path) -> None:
    user = dovecot.add_user()
    m1, m2, m3 = message(1), message(2), message(3)
    async with polling(dovecot, user, tmp_path) as (poller, spool, _):
        await append(dovecot, user, m1)
        await append(dovecot, user, m2)
        await wait_until(lambda: poller.stats["flagged"] == 2 and poller.idle_active, what="two messages")
        old = poller.uidvalidity
        assert old is not None

        def migrate() -> None:
            # A server migration: same UIDs under a new UIDVALIDITY, and the \Seen flag of m1 lost.
            with dovecot.imap(user) as conn:
                conn.uid("STORE", "1", "-FLAGS.SILENT", "(\\Seen)")
            dovecot.set_uidvalidity(user, old + 1000)

        await asyncio.to_thread(migrate)
        await append(dovecot, user, m3)  # Dovecot now drops the IDLE session ("state is inconsistent")
        await wait_until(lambda: poller.uidvalidity == old + 1000, what="new UIDVALIDITY seen")
        await wait_until(lambda: poller.stats["flagged"] == 4, what="m1 re-flagged and m3 spooled")
        assert poller.stats["duplicates"] == 1  # m1: same Message-Id, same mailbox -> not spooled again
        entries = await spool.list()
        assert len(entries) == 3
        by_mid = {e.message_id: e for e in entries}
        assert len(by_mid) == 3
        new = [e for e in entries if e.envelope.source and e.envelope.source["uidvalidity"] == old + 1000]
        assert len(new) == 1 and await spool.raw(new[0].queue_id) == m3
    assert all("\\Seen" in f for f in dovecot.flags(user).values())


async def test_oversized_broken_and_good_mail_never_block_the_mailbox(dovecot: DovecotServer,
                                                                      tmp_path: Path) -> None:
    user = dovecot.add_user()
    big = message(1, size=20_000)
    broken = b"this is not a header line\r\nnor this\r\n\r\nbody\r\n"
    good = message(3)
    no_rcpt_of_ours = message(4, to="someone@elsewhere.example")
    for raw in (big, broken, good, no_rcpt_of_ours):
        await append(dovecot, user, raw)
    async with polling(dovecot, user, tmp_path, max_message_size="10KB",
                       recipient="catchall@example.test") as (poller, spool, _):
        await wait_until(lambda: poller.stats["flagged"] == 3, what="three handled")
        await wait_until(lambda: poller.idle_active, what="IDLE after catch-up")
        assert poller.stats["oversized"] == 1
        entries = {e.envelope.source["uid"]: e for e in await spool.list() if e.envelope.source}
        assert entries[1].state == State.FAILED and "max_message_size" in (entries[1].last_error or "")
        assert entries[1].envelope.source is not None and entries[1].envelope.source["left_in_mailbox"] is True
        assert (await spool.raw(entries[1].queue_id)).endswith(b"\r\n\r\n")  # header only
        assert entries[2].state == State.FAILED and "no header section" in (entries[2].last_error or "")
        assert entries[2].message_id and entries[2].message_id_generated
        assert entries[3].state == State.RECEIVED
        assert entries[4].state == State.RECEIVED and entries[4].envelope.rcpt_tos == ("catchall@example.test",)
        assert entries[4].envelope.source is not None and entries[4].envelope.source["rcpt_from"] == "recipient"
        # A later arrival is still served, and the oversized message is not reported twice.
        await append(dovecot, user, message(5))
        await wait_until(lambda: poller.stats["flagged"] == 4, what="message after the bad ones")
        assert await count(spool) == 5 and poller.stats["oversized"] == 1
    flags = dovecot.flags(user)
    assert "\\Seen" not in flags[1]  # left in the mailbox, unread, for a human
    assert all("\\Seen" in flags[u] for u in (2, 3, 4, 5))
    # A restarted poller remembers (ledger) that it already reported the oversized one.
    async with polling(dovecot, user, tmp_path, max_message_size="10KB") as (poller, spool, _):
        await wait_until(lambda: poller.idle_active, what="IDLE")
        assert poller.stats["oversized"] == 0 and await count(spool) == 5


async def test_committed_but_unflagged_message_is_not_spooled_twice(dovecot: DovecotServer,
                                                                    tmp_path: Path) -> None:
    """The in-process half of the kill -9 guarantee: a ledger entry without the flag -> flag only."""
    user = dovecot.add_user()
    raw = message(1)
    await append(dovecot, user, raw)
    uidvalidity = dovecot.uidvalidity(user)
    config = parse_config(mailbox_config_dict(dovecot, user, tmp_path / "state"))
    spool = await SqliteSpool.open(config.spool_path)
    qid, _ = await spool.put(Envelope("", ("support@example.test",), intake="imap"), raw,
                             dedup_key=imap_key("support", uidvalidity, 1))
    await spool.close()
    async with polling(dovecot, user, tmp_path) as (poller, spool, _):
        await wait_until(lambda: poller.stats["flagged"] == 1, what="flag of the already spooled message")
        assert poller.stats["refetched"] == 1 and poller.stats["fetched"] == 0
        assert [e.queue_id for e in await spool.list()] == [qid]
    assert "\\Seen" in dovecot.flags(user)[1]


async def test_starttls_on_the_plain_port(dovecot: DovecotServer, tmp_path: Path) -> None:
    user = dovecot.add_user()
    await append(dovecot, user, message(1))
    async with polling(dovecot, user, tmp_path, tls="starttls", port=dovecot.imap_port) as (poller, spool, _):
        await wait_until(lambda: poller.stats["flagged"] == 1, what="message over STARTTLS")
        assert await count(spool) == 1


async def test_unknown_ca_is_refused_and_nothing_is_read(dovecot: DovecotServer, tmp_path: Path) -> None:
    user = dovecot.add_user()
    await append(dovecot, user, message(1))
    async with polling(dovecot, user, tmp_path, ca_file=None) as (poller, spool, _):
        await wait_until(lambda: poller.stats["errors"] >= 1, what="TLS verification failure")
        assert poller.stats["sessions"] == 0 and await count(spool) == 0
    assert "\\Seen" not in dovecot.flags(user)[1]


def unreadable_files(dovecot: DovecotServer, user: MailUser) -> list[Path]:
    maildir = dovecot.base / "mail" / user.address / "Maildir"
    return [p for p in maildir.rglob("*,S=*") if not p.stat().st_mode & 0o777]


def make_second_unreadable(dovecot: DovecotServer, user: MailUser) -> list[bytes]:
    """Three messages in the Maildir, the second one's file unreadable to Dovecot (mode 000): Dovecot answers a
    FETCH that touches it with BYE and drops the connection. Returns the three messages."""
    from tests.integration.dovecot import preload_maildir

    raws = [message(1), message(2), message(3)]
    preload_maildir(dovecot, user, raws)
    sorted((dovecot.base / "mail" / user.address / "Maildir" / "new").iterdir())[1].chmod(0)
    return raws


async def given_up_on_the_second(poller: ImapPoller, spool: SqliteSpool) -> dict[int, SpoolEntry]:
    """Wait until the poller spooled 1 and 3 and recorded 2 as unreadable; the entries by UID."""
    await wait_until(lambda: poller.stats["flagged"] == 2 and poller.stats["unreadable"] == 1, timeout=30,
                     what="two good messages spooled, the bad one given up")
    await wait_until(lambda: poller.idle_active, what="IDLE")
    return {e.envelope.source["uid"]: e for e in await spool.list() if e.envelope.source}


async def test_a_message_the_server_cannot_deliver_does_not_block_the_rest(dovecot: DovecotServer,
                                                                           tmp_path: Path) -> None:
    """The poller isolates the UID (fetched alone, after the others), gives up on it after UNREADABLE_AFTER
    failures, records it and serves the others.

    Deterministic, whatever the timing: the pipeline writes the commands of one event-loop turn together, so
    Dovecot reads pipelined FETCHes at once and works on them in parallel — it sends the data of UID 1, fails on
    UID 2 and says BYE before the tagged OK of UID 1's FETCH. Blaming the FETCH that was being awaited (UID 1's)
    recorded the good message as unreadable; only UIDs whose data did not come are suspects now."""
    user = dovecot.add_user()
    raws = make_second_unreadable(dovecot, user)
    async with polling(dovecot, user, tmp_path, backoff=0.05) as (poller, spool, _):  # several reconnects in a row
        entries = await given_up_on_the_second(poller, spool)
        assert entries[2].state == State.FAILED and "failed 4 times" in (entries[2].last_error or "")
        assert entries[2].envelope.source is not None and entries[2].envelope.source["left_in_mailbox"] is True
        assert entries[1].state == entries[3].state == State.RECEIVED
        assert [await spool.raw(entries[u].queue_id) for u in (1, 3)] == [raws[0], raws[2]]
    flags = dovecot.flags(user)
    assert "\\Seen" not in flags[2] and "\\Seen" in flags[1] and "\\Seen" in flags[3]


async def test_an_unreadable_message_readable_again_is_spooled_after_a_restart(dovecot: DovecotServer,
                                                                              tmp_path: Path) -> None:
    """The record of an unreadable message is a placeholder, not "stored": once the server can read the message,
    a restarted poller spools its bytes (in place of the placeholder) and only then flags it."""
    from structlog.testing import capture_logs

    user = dovecot.add_user()
    raws = make_second_unreadable(dovecot, user)
    async with polling(dovecot, user, tmp_path, backoff=0.05) as (poller, spool, _):
        placeholder = (await given_up_on_the_second(poller, spool))[2]
    [bad] = unreadable_files(dovecot, user)
    bad.chmod(0o600)
    with capture_logs() as logs:
        async with polling(dovecot, user, tmp_path) as (poller, spool, _):
            await wait_until(lambda: poller.stats["flagged"] == 1, what="the message, now readable")
            assert poller.stats["fetched"] == 1 and poller.stats["refetched"] == 0
            entries = {e.envelope.source["uid"]: e for e in await spool.list() if e.envelope.source}
            assert len(entries) == 3 and entries[2].queue_id != placeholder.queue_id
            assert await spool.get(placeholder.queue_id) is None
            assert entries[2].state == State.RECEIVED and entries[2].size == len(raws[1])
            assert await spool.raw(entries[2].queue_id) == raws[1]
            assert await spool.has_dedup_key(imap_key("support", poller.uidvalidity or 0, 2)) == entries[2].queue_id
    assert not [e for e in logs if e.get("event") == "imap.refetched"]
    assert [e["replaces"] for e in logs if e.get("event") == "imap.readable_again"] == [placeholder.queue_id]
    assert all("\\Seen" in f for f in dovecot.flags(user).values())


async def test_an_unreadable_message_is_tried_again_later_without_a_restart(dovecot: DovecotServer,
                                                                           tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.intake import imap as imap_intake

    monkeypatch.setattr(imap_intake, "UNREADABLE_RETRY", 0.0)  # at the next catch-up
    user = dovecot.add_user()
    raws = make_second_unreadable(dovecot, user)
    async with polling(dovecot, user, tmp_path, backoff=0.05) as (poller, spool, _):
        await given_up_on_the_second(poller, spool)
        [bad] = unreadable_files(dovecot, user)
        bad.chmod(0o600)
        await append(dovecot, user, message(4))  # new mail: a catch-up, which tries the unreadable one again
        await wait_until(lambda: poller.stats["flagged"] == 4, what="the new one and the one readable again")
        assert poller.stats["unreadable"] == 1  # reported once
        entries = {e.envelope.source["uid"]: e for e in await spool.list() if e.envelope.source}
        assert await spool.raw(entries[2].queue_id) == raws[1] and entries[2].state == State.RECEIVED
    assert all("\\Seen" in f for f in dovecot.flags(user).values())


async def test_a_long_catch_up_flags_as_it_goes_and_everything_once(dovecot: DovecotServer, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """450 waiting messages: committed ones are flagged in groups of about MAX_UIDS_PER_COMMAND (here 100, so a
    450-message catch-up has several) while the fetching goes on, every message is spooled once and ends \\Seen."""
    from structlog.testing import capture_logs

    from gateway.intake import imap as imap_intake
    from tests.integration.dovecot import preload_maildir

    group = 100
    monkeypatch.setattr(imap_intake, "MAX_UIDS_PER_COMMAND", group)
    user = dovecot.add_user()
    await asyncio.to_thread(preload_maildir, dovecot, user, [message(i) for i in range(450)])
    with capture_logs() as logs:
        async with polling(dovecot, user, tmp_path, batch_size=20) as (poller, spool, _):
            await wait_until(lambda: poller.stats["flagged"] == 450, timeout=60, what="450 flagged")
            assert await count(spool) == 450 and poller.stats["fetched"] == 450
    flagged = [e["count"] for e in logs if e.get("event") == "imap.flagged"]
    assert sum(flagged) == 450 and len(flagged) >= 2 and max(flagged) < group + 20
    assert all("\\Seen" in f for f in dovecot.flags(user).values())

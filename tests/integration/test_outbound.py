"""Outbound worker against real SMTP peers found through a real (loopback) DNS server; DKIM verified by dkimpy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import dkim
import dns.resolver
import pytest

from bounce.verp import decode
from gateway.config import parse_config
from gateway.outbound.worker import OutboundWorker
from gateway.spool import Direction, Envelope, SqliteSpool, State
from tests.dkim_keys import rsa_key
from tests.integration.dnsserver import DnsTestServer, mail_zone
from tests.integration.fakemx import FakeMx, fake_mx

SECRET = b"verp-test-secret"


def dnsfunc_for(address: tuple[str, int]) -> Any:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [address[0]]
    resolver.port = address[1]

    def dnsfunc(name: bytes | str, timeout: int = 5) -> bytes | None:
        name = name.decode() if isinstance(name, bytes) else name
        try:
            return b"".join(resolver.resolve(name, "TXT")[0].strings)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None

    return dnsfunc


ODOO_MAIL = (b"Return-Path: <bounce@example.com>\r\nFrom: \"Admin\" <notifications@example.com>\r\n"
             b"To: a@remote.test, b@remote.test\r\nBcc: secret@remote.test\r\nSubject: Invoice INV/2026/0001\r\n"
             b"Message-Id: <123.456-openerp-7-account.move@odoo>\r\nX-Odoo-Objects: account.move-7\r\n"
             b"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n"
             b"Dear customer,\r\nplease find your invoice.\r\n")


@asynccontextmanager
async def world(tmp_path: Path, **outbound: Any) -> AsyncIterator[tuple[OutboundWorker, SqliteSpool, FakeMx,
                                                                        DnsTestServer]]:
    pem, pub = rsa_key()
    (tmp_path / "dkim.key").write_bytes(pem)
    zones = [
        mail_zone("remote.test", mx=["10 mx1.remote.test."], extra=["mx1 A 127.0.0.2"]),
        mail_zone("example.com", mx=["10 mx.example.com."], dkim={"s1": f"v=DKIM1; k=rsa; p={pub}"},
                  extra=["mx A 127.0.0.3"]),
        mail_zone("nomail.test", mx=["0 ."]),
    ]
    with DnsTestServer(*zones) as dns_server:
        async with fake_mx("127.0.0.2") as capture:
            port = capture.port
            cfg = parse_config({
                "state_dir": str(tmp_path),
                "odoo": [{"name": "main", "url": "http://127.0.0.1:9", "database": "d", "password_env": "X",
                          "domains": ["example.com"]}],
                "outbound": {"smtp_port": port, "nameservers": [dns_server.nameserver],
                             "dkim": [{"domain": "example.com", "selector": "s1",
                                       "key_file": str(tmp_path / "dkim.key")}],
                             "retry_initial": "1s", **outbound},
                "bounce": {"verp": True},
            })
            spool = await SqliteSpool.open(tmp_path / "spool.db")
            worker = OutboundWorker(cfg, spool, hostname="gw.example.com", verp_secret=SECRET)
            try:
                yield worker, spool, capture, dns_server
            finally:
                await spool.close()


async def put_outbound(spool: SqliteSpool, rcpts: tuple[str, ...], raw: bytes = ODOO_MAIL,
                       sender: str = "bounce@example.com", received_at: float | None = None) -> str:
    env = Envelope(mail_from=sender, rcpt_tos=rcpts, intake="submission", received_at=received_at or time.time())
    qid, _ = await spool.put(env, raw, direction=Direction.OUTBOUND, message_id="<123.456-openerp-7-account.move@odoo>")
    return qid


async def claim(spool: SqliteSpool) -> Any:
    [entry] = await spool.claim(Direction.OUTBOUND, "t", limit=1, now=time.time() + 10**6)
    return entry


async def test_mx_delivery_verp_dkim_and_stripped_headers(tmp_path: Path) -> None:
    async with world(tmp_path) as (worker, spool, capture, dns_server):
        qid = await put_outbound(spool, ("a@remote.test", "b@remote.test"))
        entry = await worker.process(await claim(spool))
        assert entry.state == State.SENT
        assert len(capture.transactions) == 2  # VERP: one transaction per recipient
        for index, (mail_from, rcpts, data) in enumerate(capture.transactions):
            token = decode(mail_from, SECRET)
            assert token is not None and token.valid and token.queue_id == qid
            assert entry.envelope.rcpt_tos[token.rcpt_index] == rcpts[0]
            assert mail_from.startswith("bounce+") and mail_from.endswith("@example.com")
            assert b"\r\nReturn-Path:" not in b"\r\n" + data and b"\r\nBcc:" not in b"\r\n" + data
            # This hop's trace field on top (RFC 5321 §4.4), then the signature
            assert data.startswith(b"Received: by gw.example.com (mailgw) with ESMTPA\r\n\tid " + qid.encode())
            assert data.split(b"\r\n")[3].startswith(b"DKIM-Signature:")
            assert dkim.verify(data, dnsfunc=dnsfunc_for(dns_server.address)), f"transaction {index}"
        # A forged token (another queue id) does not validate.
        forged = capture.transactions[0][0].replace(qid[:4].lower(), "zzzz")
        forged_token = decode(forged, SECRET)
        assert forged_token is None or not forged_token.valid


async def test_per_recipient_results_dsn_and_retry(tmp_path: Path) -> None:
    async with world(tmp_path) as (worker, spool, capture, _dns):
        qid = await put_outbound(spool, ("ok@remote.test", "bad@remote.test", "busy@remote.test"))
        entry = await worker.process(await claim(spool))
        assert entry.state == State.OUTGOING  # busy@ is still pending
        status = entry.rcpt_status or {}
        assert status["ok@remote.test"]["state"] == "sent"
        assert status["bad@remote.test"]["state"] == "failed" and status["bad@remote.test"]["status"] == "5.1.1"
        assert status["busy@remote.test"]["state"] == "deferred"
        assert entry.next_attempt_at > time.time()
        # bad@ produced a DSN to the envelope sender (our bounce address).
        dsns = [e for e in await spool.list(direction=Direction.OUTBOUND) if e.queue_id != qid]
        assert len(dsns) == 1 and dsns[0].envelope.mail_from == ""
        assert dsns[0].envelope.rcpt_tos == ("bounce@example.com",)
        # Second attempt: only busy@ is tried again; after the lifetime it fails (DSN) and the entry is done.
        capture.messages.clear()
        await spool.wake([qid])
        entry = await claim_one(spool, qid)
        worker.clock = lambda: time.time() + 6 * 86400
        entry = await worker.process(entry)
        assert [t[1] for t in capture.transactions] == []  # busy@ refused at RCPT again: no DATA
        assert entry.state == State.SENT and (entry.rcpt_status or {})["busy@remote.test"]["status"] == "5.4.7"
        assert len([e for e in await spool.list(direction=Direction.OUTBOUND) if e.queue_id != qid]) == 2


async def claim_one(spool: SqliteSpool, qid: str) -> Any:
    for entry in await spool.claim(Direction.OUTBOUND, "t", limit=10, now=time.time() + 10**6):
        if entry.queue_id == qid:
            return entry
        await spool.release(entry.queue_id)
    raise AssertionError(f"{qid} not claimable")


async def test_dsn_to_our_bounce_address_is_delivered_locally(tmp_path: Path) -> None:
    async with world(tmp_path) as (worker, spool, _capture, _dns):
        qid = await put_outbound(spool, ("bounce@example.com",), raw=b"Subject: dsn\r\n\r\nreport\r\n", sender="")
        entry = await worker.process(await claim(spool))
        assert entry.state == State.SENT
        [inbound] = await spool.list(direction=Direction.INBOUND)
        assert inbound.envelope.rcpt_tos == ("bounce@example.com",) and inbound.envelope.intake == "internal"
        assert await spool.raw(inbound.queue_id) == b"Subject: dsn\r\n\r\nreport\r\n"
        assert (inbound.envelope.source or {}).get("outbound") == qid


async def test_null_mx_and_unknown_domain_fail_permanently(tmp_path: Path) -> None:
    async with world(tmp_path) as (worker, spool, _capture, _dns):
        await put_outbound(spool, ("x@nomail.test", "y@nxdomain.test"), sender="")
        entry = await worker.process(await claim(spool))
        assert entry.state == State.EXCEPTION
        status = entry.rcpt_status or {}
        assert status["x@nomail.test"]["state"] == "failed" and "null MX" in status["x@nomail.test"]["text"]
        assert status["y@nxdomain.test"]["state"] == "failed"
        # The null sender never gets a DSN.
        assert len(await spool.list(direction=Direction.OUTBOUND)) == 1


async def test_dns_timeout_defers(tmp_path: Path) -> None:
    async with world(tmp_path) as (worker, spool, _capture, dns_server):
        dns_server.servfail.add("remote.test")
        await put_outbound(spool, ("a@remote.test",))
        entry = await worker.process(await claim(spool))
        assert entry.state == State.OUTGOING
        assert (entry.rcpt_status or {})["a@remote.test"]["state"] == "deferred"


async def test_relay_mode_sends_everything_to_the_relay(tmp_path: Path) -> None:
    async with fake_mx("127.0.0.1") as relay_capture, world(
            tmp_path, relay={"host": "127.0.0.1", "port": relay_capture.port, "tls": "none"}) as (worker, spool,
                                                                                                  mx_capture, _):
        await put_outbound(spool, ("a@remote.test", "z@other.test"), sender="someone@example.org")
        entry = await worker.process(await claim(spool))
        assert entry.state == State.SENT
        assert mx_capture.transactions == []
        assert sorted(r for t in relay_capture.transactions for r in t[1]) == ["a@remote.test", "z@other.test"]
        assert all(t[0] == "someone@example.org" for t in relay_capture.transactions)  # not a bounce address


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_worker_loop_drains_queue(tmp_path: Path, concurrency: int) -> None:
    async with world(tmp_path, concurrency=concurrency) as (worker, spool, capture, _dns):
        for i in range(6):
            await put_outbound(spool, (f"r{i}@remote.test",))
        task = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 20
        while len(await spool.list(state=State.SENT)) < 6 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await worker.stop()
        await asyncio.wait_for(task, 5)
        assert len(await spool.list(state=State.SENT)) == 6 and len(capture.transactions) == 6

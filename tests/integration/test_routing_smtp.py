"""Routing end to end: a real SMTP listener asking the Router at RCPT time, the real spool, the inbound worker
and a stand-in Odoo over XML-RPC.

- an unknown alias gets 550 5.1.1 at RCPT (nothing is spooled, nothing bounces later);
- with no directory snapshot the answer is 451 4.3.0 (never accept blind);
- a reply to a message Odoo sent lands on that record;
- catchall+sale.order-42@ lands on record 42 of sale.order.
"""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from gateway.admission import AdmissionPolicy
from gateway.config import Config, ListenerConfig, parse_config
from gateway.inbound import InboundWorker, build_clients
from gateway.intake.smtp import SmtpListener
from gateway.odoo.directory import DirectorySync
from gateway.routing_policy import policy_from_config, rcpt_precheck
from gateway.spool import SqliteSpool, State
from routing.router import Router
from tests.odoo_standin import OdooStandin, odoo_instance_config

DOMAIN = "example.com"
FAST = {"retry_initial": "0.05s", "retry_max": "0.2s", "poll_interval": "0.02s"}


@dataclass
class Gateway:
    config: Config
    spool: SqliteSpool
    listener: SmtpListener
    worker: InboundWorker | None
    router: list[Router]

    def send(self, mail_from: str, rcpts: list[str], raw: bytes) -> dict[str, tuple[int, bytes]]:
        """One SMTP transaction; the per-RCPT answers (refused ones) as smtplib reports them."""
        with smtplib.SMTP("127.0.0.1", self.listener.port, timeout=10) as client:
            try:
                return client.sendmail(mail_from, rcpts, raw)
            except smtplib.SMTPRecipientsRefused as exc:
                return dict(exc.recipients)

    def rcpt(self, address: str) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", self.listener.port, timeout=10) as client:
            client.ehlo("client.test")
            client.mail("ann@example.org")
            return client.rcpt(address)


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, standin: OdooStandin | None, *, with_worker: bool = True,
                  **instance: object) -> AsyncIterator[Gateway]:
    if standin is not None:
        odoo = [odoo_instance_config(standin, tmp_path, timeout="2s", domains=[DOMAIN], **instance)]
    else:  # an instance that is never reachable: its directory stays empty
        secret = tmp_path / "secret"
        secret.write_text("x")
        odoo = [{"name": "main", "url": "http://127.0.0.1:9", "database": "db", "password_file": str(secret),
                 "domains": [DOMAIN]}]
    config = parse_config({"state_dir": str(tmp_path / "state"), "odoo": odoo, "delivery": FAST})
    spool = await SqliteSpool.open(tmp_path / "spool.db")
    clients = build_clients(config) if standin is not None else {}
    sync = DirectorySync(config, clients)
    if standin is not None:
        await sync.refresh()
    router = [Router(sync.current, policy_from_config(config))]
    sync.subscribe(lambda d: router.__setitem__(0, router[0].with_directory(d)))
    admission = AdmissionPolicy(config, precheck=rcpt_precheck(lambda: router[0]))
    listener = SmtpListener(ListenerConfig(kind="smtp", bind="127.0.0.1:0"), spool=spool,
                            rcpt_check=admission.check_rcpt, hostname="mx.test")
    await listener.start()
    worker = InboundWorker(config, spool, clients, sync, hostname="gw.test") if with_worker else None
    task = asyncio.create_task(worker.run()) if worker else None
    try:
        yield Gateway(config, spool, listener, worker, router)
    finally:
        await listener.drain(1)
        if worker is not None and task is not None:
            await worker.stop(timeout=1.0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for c in clients.values():
            await c.close()
        await spool.close()


async def wait_delivered(spool: SqliteSpool, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        entries = await spool.list(limit=100)
        if entries and all(e.state == State.DELIVERED and e.claimed_by is None for e in entries):
            return
        if time.monotonic() > deadline:
            raise AssertionError([(e.queue_id, e.state, e.last_error) for e in entries])
        await asyncio.sleep(0.02)


async def test_unknown_alias_gets_550_at_rcpt(odoo_standin: OdooStandin, tmp_path: Path) -> None:
    async with gateway(tmp_path, odoo_standin, with_worker=False) as gw:
        loop = asyncio.get_running_loop()
        code, text = await loop.run_in_executor(None, gw.rcpt, f"nobody@{DOMAIN}")
        assert (code, text[:5]) == (550, b"5.1.1")
        code, _ = await loop.run_in_executor(None, gw.rcpt, f"Sales@{DOMAIN}")
        assert code == 250
        code, text = await loop.run_in_executor(None, gw.rcpt, "someone@elsewhere.example")
        assert (code, text[:5]) == (550, b"5.7.1")
        code, _ = await loop.run_in_executor(None, gw.rcpt, f"sales+tag@{DOMAIN}")  # Odoo: no plus-addressing
        assert code == 550
        refused = await loop.run_in_executor(
            None, gw.send, "ann@example.org", [f"sales@{DOMAIN}", f"nobody@{DOMAIN}"],
            b"From: ann@example.org\r\nTo: sales@example.com\r\nSubject: hi\r\n\r\nhello\r\n")
        assert list(refused) == [f"nobody@{DOMAIN}"] and refused[f"nobody@{DOMAIN}"][0] == 550
        [entry] = await gw.spool.list(limit=10)
        assert entry.envelope.rcpt_tos == (f"sales@{DOMAIN}",)  # only the accepted recipient was spooled


async def test_no_directory_means_451_never_accept_blind(tmp_path: Path) -> None:
    async with gateway(tmp_path, None, with_worker=False) as gw:
        code, text = await asyncio.get_running_loop().run_in_executor(None, gw.rcpt, f"sales@{DOMAIN}")
        assert (code, text[:5]) == (451, b"4.3.0")
        assert not await gw.spool.list(limit=10)


async def test_reply_to_a_message_odoo_sent_lands_on_its_record(odoo_standin: OdooStandin, tmp_path: Path) -> None:
    sent = "<170000.123-openerp-7-crm.lead@odoo.example.com>"
    odoo_standin.add_message(sent, "crm.lead", 7)
    odoo_standin.records["crm.lead"] = {7: {"id": 7, "messages": [sent]}}
    async with gateway(tmp_path, odoo_standin) as gw:
        raw = (f"From: ann@example.org\r\nTo: \"Sales\" <catchall@{DOMAIN}>\r\nSubject: Re: your quote\r\n"
               f"Message-Id: <reply-1@example.org>\r\nIn-Reply-To: {sent}\r\nReferences: <x@y> {sent}\r\n\r\n"
               "Thanks!\r\n").encode()
        refused = await asyncio.get_running_loop().run_in_executor(
            None, gw.send, "ann@example.org", [f"catchall@{DOMAIN}"], raw)
        assert refused == {}
        await wait_delivered(gw.spool)
        [entry] = await gw.spool.list(limit=10)
        assert entry.route[0]["route"] == "reply" and entry.route[0]["thread_id"] == 7
    assert odoo_standin.records["crm.lead"][7]["messages"] == [sent, "<reply-1@example.org>"]


async def test_catchall_subaddress_lands_on_the_named_record(odoo_standin: OdooStandin, tmp_path: Path) -> None:
    odoo_standin.records["sale.order"] = {42: {"id": 42, "messages": []}}
    async with gateway(tmp_path, odoo_standin) as gw:
        rcpt = f"catchall+sale.order-42@{DOMAIN}"
        raw = (f"From: ann@example.org\r\nTo: {rcpt}\r\nSubject: about my order\r\n"
               "Message-Id: <order-42@example.org>\r\n\r\nWhen does it ship?\r\n").encode()
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, gw.send, "ann@example.org", [rcpt], raw) == {}
        await wait_delivered(gw.spool)
        [entry] = await gw.spool.list(limit=10)
        assert (entry.route[0]["route"], entry.route[0]["model"], entry.route[0]["thread_id"]) == (
            "subaddress", "sale.order", 42)
        code, _ = await loop.run_in_executor(None, gw.rcpt, f"catchall+gibberish@{DOMAIN}")
        assert code == 550
    assert odoo_standin.records["sale.order"][42]["messages"] == ["<order-42@example.org>"]
    [call] = odoo_standin.posted()
    assert call.args[0] == "sale.order" or call.kwargs.get("model") == "sale.order"


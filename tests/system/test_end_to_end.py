"""The whole gateway as a process: SMTP in → stand-in Odoo; Odoo's submission out → a remote MX found through
DNS, with VERP; the remote MX's refusal and a later bounce come back to Odoo as reports it understands."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

from bounce.verp import decode
from tests.integration.dnsserver import DnsTestServer, mail_zone
from tests.integration.fakemx import FakeMx, fake_mx
from tests.odoo_standin import OdooStandin
from tests.system.daemon import DaemonProcess, free_port
from tests.waiting import wait_until

VERP_SECRET = "e2e-verp-secret-0123456789"


def send(port: int, sender: str, rcpts: list[str], data: bytes) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.sendmail(sender, rcpts, data)


async def test_end_to_end(tmp_path: Path, odoo_standin: OdooStandin) -> None:
    odoo_standin.add_message("<thread-1-openerp-42-crm.lead@odoo>", "crm.lead", 42)
    smtp_port, submission_port = free_port(), free_port()
    # The internet's side: accepts ok@, refuses bad@ with 550 5.1.1.
    async with fake_mx("127.0.0.1") as remote:
        with DnsTestServer(mail_zone("remote.test", mx=["10 mx.remote.test."], extra=["mx A 127.0.0.1"])) as dns:
            config = {
                "state_dir": str(tmp_path / "state"),
                "listeners": [{"kind": "smtp", "bind": f"127.0.0.1:{smtp_port}", "hostname": "gw.example.com"},
                              {"kind": "submission", "bind": f"127.0.0.1:{submission_port}",
                               "hostname": "gw.example.com"}],
                "odoo": [{"name": "main", "url": odoo_standin.url, "database": "odoo", "login": "mailgw",
                          "password_env": "E2E_ODOO_PW", "domains": ["example.com"]}],
                "delivery": {"poll_interval": "0.2s", "retry_initial": "0.5s"},
                "outbound": {"smtp_port": remote.port, "nameservers": [dns.nameserver], "retry_initial": "0.5s"},
                "bounce": {"verp_secret_env": "E2E_VERP"},
                "logging": {"format": "json"},
            }
            daemon = DaemonProcess(tmp_path, config, env={"E2E_ODOO_PW": "secret", "E2E_VERP": VERP_SECRET})
            try:
                await asyncio.to_thread(daemon.start)
                await wait_until(lambda: (tmp_path / "state" / "directory.json").exists(), what="directory from Odoo")
                await _inbound_cases(daemon, odoo_standin)
                await _outbound_and_bounces(daemon, odoo_standin, remote)
            finally:
                await asyncio.to_thread(daemon.stop)


async def _inbound_cases(daemon: DaemonProcess, odoo: OdooStandin) -> None:
    port = daemon.smtp_port
    # An alias: delivered with the envelope in front (Return-Path, Delivered-To), bytes otherwise untouched.
    body = b"From: Customer <c@customer.test>\r\nTo: sales@example.com\r\nSubject: Quote\r\n" \
           b"Message-Id: <q1@customer.test>\r\n\r\nPlease quote 10 chairs.\r\n"
    assert await asyncio.to_thread(send, port, "c@customer.test", ["sales@example.com"], body) == {}
    call = await wait_until(lambda: next((c for c in odoo.message_calls() if c.message_id == "<q1@customer.test>"),
                                         None), what="delivery to Odoo")
    assert call.message is not None and call.message.endswith(body)
    assert b"Return-Path: <c@customer.test>" in call.message
    assert b"Delivered-To:" not in call.message  # sales@ shows in To: Odoo decides from the headers as sent
    # An unknown recipient of our domain is refused in the dialogue; a foreign domain is not relayed.
    for rcpt, code in (("nobody@example.com", 550), ("victim@elsewhere.test", 550)):
        try:
            await asyncio.to_thread(send, port, "c@customer.test", [rcpt], b"Subject: x\r\n\r\nx\r\n")
            raise AssertionError(f"{rcpt} accepted")
        except smtplib.SMTPRecipientsRefused as exc:
            assert exc.recipients[rcpt][0] == code
    # A reply to a message Odoo sent, through the catchall: Odoo's reply route finds the thread.
    reply = b"From: c@customer.test\r\nTo: catchall@example.com\r\nSubject: Re: Quote\r\n" \
            b"In-Reply-To: <thread-1-openerp-42-crm.lead@odoo>\r\nMessage-Id: <r1@customer.test>\r\n\r\nOK!\r\n"
    assert await asyncio.to_thread(send, port, "c@customer.test", ["catchall@example.com"], reply) == {}
    await wait_until(lambda: any(c.message_id == "<r1@customer.test>" for c in odoo.message_calls()), what="reply")
    entries = await wait_until(lambda: [e for e in daemon.queue() if e["message_id"] == "<r1@customer.test>"
                                        and e["state"] == "delivered"], what="reply delivered")
    assert entries


async def _outbound_and_bounces(daemon: DaemonProcess, odoo: OdooStandin, remote: FakeMx) -> None:
    # Odoo submits a notification with its static bounce address as envelope sender.
    notification = (b"Return-Path: <bounce@example.com>\r\nFrom: \"Sales\" <notifications@example.com>\r\n"
                    b"To: ok@remote.test, bad@remote.test\r\nSubject: Your quote\r\n"
                    b"Message-Id: <n1-openerp-42-crm.lead@odoo>\r\nX-Odoo-Objects: crm.lead-42\r\n\r\nHere it is.\r\n")
    submission_port = int(daemon.config["listeners"][1]["bind"].rpartition(":")[2])
    refused = await asyncio.to_thread(send, submission_port, "bounce@example.com",
                                      ["ok@remote.test", "bad@remote.test"], notification)
    assert refused == {}  # the submission listener accepted both; delivery is the gateway's job now
    mail_from, rcpts, data = await wait_until(lambda: remote.transactions[0] if remote.messages else None,
                                              what="delivery to the remote MX")
    token = decode(mail_from, VERP_SECRET.encode())
    assert rcpts == ["ok@remote.test"] and token is not None and token.valid
    assert b"Return-Path:" not in data.split(b"\r\n\r\n")[0]
    # bad@ was refused by the MX: the DSN goes to the bounce address, which is ours, so it comes back in and
    # reaches Odoo as a report naming bad@remote.test and the original Message-Id.
    report = await wait_until(lambda: next((c for c in odoo.message_calls() if c.message and
                                            b"Final-Recipient: rfc822; bad@remote.test" in c.message), None),
                              timeout=30, what="bounce report to Odoo")
    assert report.message is not None
    assert b"<n1-openerp-42-crm.lead@odoo>" in report.message and b"To: bounce@example.com" in report.message
    # Later, ok@'s server bounces asynchronously to the VERP address: Odoo hears about ok@ too.
    late = (f"From: MAILER-DAEMON@mx.remote.test\r\nTo: {mail_from}\r\nSubject: Undelivered Mail\r\n"
            "Message-Id: <late-bounce@mx.remote.test>\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
            "--B\r\nContent-Type: text/plain\r\n\r\nMailbox deleted.\r\n"
            "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.remote.test\r\n\r\n"
            "Final-Recipient: rfc822; ok@remote.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
            "Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n"
            "--B\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-Id: <n1-openerp-42-crm.lead@odoo>\r\n--B--\r\n")
    assert await asyncio.to_thread(send, daemon.smtp_port, "", [mail_from], late.encode()) == {}
    await wait_until(lambda: any(c.message and b"Final-Recipient: rfc822; ok@remote.test" in c.message
                                 and b"To: bounce@example.com" in c.message for c in odoo.message_calls()),
                     timeout=30, what="late bounce report to Odoo")

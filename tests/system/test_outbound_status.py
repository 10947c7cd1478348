"""What Odoo shows for mail it handed to the gateway, the daemon running as a process, Odoo a stand-in that keeps
notifications and bounce counters as Odoo 19 does (tests/odoo_standin_mail.py).

Odoo sends one transaction per recipient partner, all with the message's Message-Id. Four partners, four fates:
- bad@ (550 5.1.1, a dead address): a bounce — counted on the partner, notification `bounce`;
- policy@ (550 5.7.1 DMARC): a delivery failure on the notification with the server's answer, no bounce counted;
- busy@ (451 until the lifetime runs out): the same, "delivery time expired";
- jörg@ (non-ASCII local part, the MX does not offer SMTPUTF8): the same, failure type "invalid email address".
Every failure text names the gateway queue id of the message that failed.
"""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

import pytest

from tests.integration.dnsserver import DnsTestServer, mail_zone
from tests.integration.fakemx import fake_mx
from tests.odoo_standin import OdooStandin, odoo_instance_config
from tests.system.daemon import DaemonProcess, free_port
from tests.waiting import wait_until

MID = "<417.1700000000-openerp-42-crm.lead@odoo>"


def submit(port: int, rcpt: str) -> None:
    body = (f"Return-Path: <bounce@example.com>\r\nFrom: \"Sales\" <notifications@example.com>\r\nTo: {rcpt}\r\n"
            f"Subject: Your quote\r\nMessage-Id: {MID}\r\nX-Odoo-Objects: crm.lead-42\r\n\r\nHere it is.\r\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("odoo.local")
        options = ["SMTPUTF8"] if not rcpt.isascii() else []
        client.sendmail("bounce@example.com", [rcpt], body.encode(), mail_options=options)


@pytest.mark.parametrize("api", ["xmlrpc", "json2"])
async def test_permanent_failures_are_visible_on_the_right_notification(tmp_path: Path, odoo_standin: OdooStandin,
                                                                        api: str) -> None:
    message = odoo_standin.add_message(MID, "crm.lead", 42)
    partners = {addr: odoo_standin.add_partner(addr.split("@")[0].title(), addr)
                for addr in ("bad@remote.test", "policy@remote.test", "busy@remote.test", "jörg@remote.test")}
    notes = {addr: odoo_standin.add_notification(message, pid) for addr, pid in partners.items()}
    submission = free_port()
    async with fake_mx("127.0.0.2") as mx:
        with DnsTestServer(mail_zone("remote.test", mx=["10 mx.remote.test."], extra=["mx A 127.0.0.2"])) as dns:
            config = {
                "state_dir": str(tmp_path / "state"),
                "listeners": [{"kind": "submission", "bind": f"127.0.0.1:{submission}"}],
                "odoo": [odoo_instance_config(odoo_standin, tmp_path, api=api)],
                "delivery": {"poll_interval": "0.1s", "retry_initial": "0.3s", "retry_max": "0.5s"},
                "outbound": {"smtp_port": mx.port, "nameservers": [dns.nameserver], "retry_initial": "0.3s",
                             "retry_max": "0.5s", "lifetime": "3s", "helo_name": "gw.example.com"},
                "bounce": {"verp_secret_env": "STATUS_VERP"},
                "logging": {"format": "json"},
            }
            daemon = DaemonProcess(tmp_path, config, env={"STATUS_VERP": "status-test-verp-secret"})
            try:
                await asyncio.to_thread(daemon.start)
                await wait_until(lambda: (tmp_path / "state" / "directory.json").exists(), what="directory")
                for addr in partners:
                    await asyncio.to_thread(submit, submission, addr)

                def settled() -> bool:
                    return all(n["notification_status"] in ("bounce", "exception")
                               for n in odoo_standin.notifications(message))

                await wait_until(settled, timeout=60, what="every notification final")
                queue = await asyncio.to_thread(daemon.queue)
            finally:
                await asyncio.to_thread(daemon.stop)
    qid = {e["rcpt_tos"][0]: e["queue_id"] for e in queue if e["intake"] == "submission"}
    by_partner = {n["res_partner_id"][0]: n for n in odoo_standin.notifications(message)}
    assert len(by_partner) == 4  # one notification per partner: replaced, not duplicated
    for addr, note_id in notes.items():  # the bounce updates Odoo's row; a failure replaces it
        assert (by_partner[partners[addr]]["id"] == note_id) == (addr == "bad@remote.test")
    # the dead address: a bounce, counted
    bad = by_partner[partners["bad@remote.test"]]
    assert (bad["notification_status"], bad["failure_type"]) == ("bounce", "mail_bounce")
    assert odoo_standin.partner_bounces(partners["bad@remote.test"]) == 1
    assert f"mailgw queue id {qid['bad@remote.test']}" in bad["failure_reason"]
    # the others: a delivery failure with the answer, no bounce counted
    expected = {"policy@remote.test": ("unknown", "550 5.7.1 Message rejected"),
                "busy@remote.test": ("unknown", "5.4.7 delivery time expired; last error: 451 4.2.1 Mailbox busy"),
                "jörg@remote.test": ("mail_email_invalid", "553 5.6.7")}
    for addr, (failure_type, text) in expected.items():
        note = by_partner[partners[addr]]
        assert note["notification_status"] == "exception", (addr, note)
        assert note["failure_type"] == failure_type, (addr, note)
        assert text in note["failure_reason"] and f"mailgw queue id {qid[addr]}" in note["failure_reason"], note
        assert odoo_standin.partner_bounces(partners[addr]) == 0
    assert [m.rcpts for m in mx.messages] == []  # nothing was delivered; nothing was delivered twice either
    failed = {e["queue_id"]: e for e in queue if e["intake"] == "submission"}
    assert all(e["state"] == "exception" for e in failed.values())
    dsns = [e for e in queue if e["direction"] == "outbound" and e["mail_from"] == ""]
    assert dsns and all(e["message_id"].endswith("@gw.example.com>") for e in dsns)

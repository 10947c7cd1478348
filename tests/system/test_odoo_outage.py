"""Odoo down while 200 messages arrive over SMTP: all deferred, none bounced; Odoo back: each delivered once,
in arrival order per sender. `mailgw serve` runs as a subprocess, its SMTP intake fed with smtplib, Odoo
played by the stand-in."""

from __future__ import annotations

import smtplib
import sqlite3
import time
from collections import defaultdict
from pathlib import Path

from tests.odoo_standin import OdooStandin, odoo_instance_config
from tests.system.daemon import DaemonProcess, base_config
from tests.waiting import wait_until_sync

SENDERS = [f"sender{i}@example.org" for i in range(5)]
TOTAL = 200


def states(db: Path) -> dict[tuple[str, str], int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT direction, state, COUNT(*) FROM entries GROUP BY direction, state").fetchall()
    finally:
        conn.close()
    return {(d, s): n for d, s, n in rows}


def rcpt_accepted(port: int, rcpt: str) -> bool:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo()
        smtp.mail("probe@example.org")
        code, _ = smtp.rcpt(rcpt)
        smtp.rset()
        return code == 250


def test_outage_defers_everything_then_delivers_each_once_in_order(tmp_path: Path) -> None:
    standin = OdooStandin().start()
    cfg = base_config(tmp_path)
    cfg["odoo"] = [odoo_instance_config(standin, tmp_path, timeout="5s")]
    cfg["delivery"] = {"retry_initial": "0.2s", "retry_max": "2s", "poll_interval": "0.05s",
                       "breaker_threshold": 5, "breaker_cooldown": "0.5s", "concurrency": 8}
    gw = DaemonProcess(tmp_path, cfg)
    spool_db = tmp_path / "state" / "spool.sqlite3"
    try:
        gw.start()
        # Odoo was up when the gateway started: the alias directory is fetched and cached...
        wait_until_sync(lambda: (tmp_path / "state" / "directory.json").exists(), "the directory cache", 20,
                        details=gw.log_text, interval=0.1)
        wait_until_sync(lambda: rcpt_accepted(gw.smtp_port, "sales@example.com"), "RCPT accepted", 20,
                        details=gw.log_text, interval=0.1)
        standin.down()  # ...then Odoo goes away (connection refused) while mail keeps coming.
        sent: dict[str, list[str]] = defaultdict(list)
        with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as smtp:
            for i in range(TOTAL):
                sender = SENDERS[i % len(SENDERS)]
                mid = f"<{i:03d}.{sender.split('@')[0]}@example.org>"
                body = (f"From: {sender}\r\nTo: sales@example.com\r\nSubject: outage {i}\r\n"
                        f"Message-Id: {mid}\r\n\r\nmessage {i}\r\n")
                smtp.sendmail(sender, ["sales@example.com"], body.encode())
                sent[sender].append(mid)

        def all_deferred() -> bool:
            return states(spool_db).get(("inbound", "deferred"), 0) == TOTAL

        wait_until_sync(all_deferred, "200 deferred entries", 60, details=gw.log_text, interval=0.1)
        time.sleep(1.0)  # stay down through a few breaker cooldowns: still nothing bounces
        during = states(spool_db)
        assert during.get(("inbound", "deferred")) == TOTAL
        assert not during.get(("inbound", "failed")) and not during.get(("inbound", "delivered"))
        assert not any(d == "outbound" for d, _s in during), during  # no DSN, nothing bounced
        assert not standin.message_calls()

        standin.up()
        wait_until_sync(lambda: states(spool_db).get(("inbound", "delivered"), 0) == TOTAL, "200 deliveries", 60,
                        details=gw.log_text, interval=0.1)
        calls = standin.message_calls()
        assert len(calls) == TOTAL  # exactly once: no call was repeated
        assert all(c.outcome.startswith("id:") for c in calls)
        assert len({c.message_id for c in calls}) == TOTAL
        by_sender: dict[str, list[str]] = defaultdict(list)
        for c in calls:
            assert c.message is not None and c.message_id is not None
            sender = c.message.split(b"Return-Path: <", 1)[1].split(b">", 1)[0].decode()
            by_sender[sender].append(c.message_id)
        assert by_sender == sent  # arrival order per sender
        assert not any(d == "outbound" for d, _s in states(spool_db))
        events = [e.get("event") for e in gw.events()]
        assert events.count("odoo.unavailable") == 1  # one line for the outage, not one per message
        assert "odoo.recovered" in events
        assert gw.stop() == 0
    finally:
        if gw.proc is not None and gw.proc.poll() is None:
            gw.proc.kill()
        standin.stop()

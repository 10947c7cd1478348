"""The `held` spool state: transitions, release, expiry, the queue commands; and mail the intake did not verify
(`mailgw pipe`) verified by the worker with what is known."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import yaml
from structlog.testing import capture_logs

from gateway.auth.held import HeldExpiry, release
from gateway.cli import main
from gateway.headers import extract_message_id
from gateway.spool import Direction, Envelope, SqliteSpool, State
from gateway.spool.base import AUTH_STATUS_KEY, InvalidTransition
from tests.integration.auth_zone import ORIGIN_IP, STRANGER_IP, Keys, message
from tests.integration.dnsserver import DnsTestServer
from tests.integration.test_auth_end_to_end import (
    CORP_IP,
    _held,
    delivered,
    dns,  # noqa: F401 - fixture
    keys,  # noqa: F401 - fixture
    our_results,
    running,
)
from tests.odoo_standin import OdooStandin
from tests.waiting import wait_until

AUTH = {"authserv_id": "mx.example.com", "ar": "mx.example.com; dmarc=fail header.from=example.com",
        "dmarc": "fail", "spf": "fail", "dkim": [], "arc": "none", "from_domain": "example.com"}


async def _held_entry(spool: SqliteSpool) -> str:
    env = Envelope("boss@example.com", ("sales@example.com",), "smtp", peer="127.0.0.6:1", source={"auth": AUTH})
    qid, _ = await spool.put(env, message("boss@example.com"), state=State.HELD,
                             last_error="held by sender authentication (protect.internal_user): forged")
    return qid


async def test_held_is_never_claimed_and_release_marks_it(tmp_path: Path) -> None:
    spool = await SqliteSpool.open(tmp_path / "s.db")
    try:
        qid = await _held_entry(spool)
        assert await spool.claim(Direction.INBOUND, "w", limit=10) == []
        entry = await release(spool, qid)
        assert entry.state == State.RECEIVED
        assert entry.rcpt_status is not None and entry.rcpt_status[AUTH_STATUS_KEY]["state"] == "released"
        with pytest.raises(InvalidTransition):
            await release(spool, qid)  # no longer held
        with pytest.raises(InvalidTransition):
            await spool.delete(qid, only_in=State.HELD)  # the expiry never deletes a released entry
        assert [e.queue_id for e in await spool.claim(Direction.INBOUND, "w", limit=10)] == [qid]
    finally:
        await spool.close()


async def test_expiry_deletes_old_held_mail_with_a_log_line(tmp_path: Path) -> None:
    spool = await SqliteSpool.open(tmp_path / "s.db")
    try:
        qid = await _held_entry(spool)
        expiry = HeldExpiry(spool, lifetime=3600)
        assert await expiry.sweep() == []
        with capture_logs() as logs:
            assert await expiry.sweep(now=time.time() + 7200) == [qid]
        [line] = [x for x in logs if x["event"] == "auth.held_expired"]
        assert line["queue_id"] == qid and line["sender"] == "boss@example.com" and "forged" in line["reason"]
        assert await spool.get(qid) is None
    finally:
        await spool.close()


def test_queue_commands_for_held_mail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"state_dir": str(tmp_path)}))

    async def seed() -> str:
        spool = await SqliteSpool.open(tmp_path / "spool.sqlite3")
        try:
            return await _held_entry(spool)
        finally:
            await spool.close()

    qid = asyncio.run(seed())
    assert main(["queue", "list", "--state", "held", "-c", str(cfg)]) == 0
    assert qid in capsys.readouterr().out
    assert main(["queue", "show", qid, "-c", str(cfg)]) == 0
    shown = capsys.readouterr().out
    assert "HELD by sender authentication" in shown and f"mailgw queue release {qid}" in shown
    assert "Authentication-Results: mx.example.com; dmarc=fail" in shown
    assert main(["queue", "release", qid, "-c", str(cfg)]) == 0
    assert "released" in capsys.readouterr().out
    assert main(["queue", "release", qid, "-c", str(cfg)]) == 65


async def test_pipe_mail_is_verified_by_the_worker(tmp_path: Path, odoo_standin: OdooStandin,
                                                   dns: DnsTestServer, keys: Keys) -> None:  # noqa: F811
    """`mailgw pipe` stores before any check; the worker verifies with the client from the topmost Received
    (written by the MTA that runs the pipe), holds what would impersonate an internal user, tags the rest."""
    odoo_standin.add_user("boss@example.com")
    async with running(tmp_path, odoo_standin, dns, {}) as daemon:
        assert daemon.spool is not None

        def piped(ip: str, raw: bytes) -> bytes:
            return (f"Received: from client.test (client.test [{ip}])\r\n\tby mx.example.com (Postfix) with ESMTP; "
                    "Mon, 02 Nov 2026 10:00:00 +0000\r\n").encode() + raw

        forged = piped(STRANGER_IP, message("Boss <boss@example.com>", to="sales@example.com", mid="<pp1@x>"))
        good = piped(CORP_IP, message("Boss <boss@example.com>", to="sales@example.com", mid="<pp2@x>"))
        other = piped(ORIGIN_IP, message("carol@customer.test", to="sales@example.com", mid="<pp3@x>"))
        for raw in (forged, good, other):
            await daemon.spool.put(Envelope("boss@example.com", ("sales@example.com",), "pipe"), raw,
                                   message_id=extract_message_id(raw))
        daemon.inbound.worker.kick()
        await wait_until(lambda: _held(daemon, "<pp1@x>"), "forged internal user held")
        ok = await wait_until(lambda: delivered(odoo_standin, "<pp2@x>"), "authenticated pipe mail delivered")
        assert "spf=pass" in our_results(ok)[0] and "dmarc=pass" in our_results(ok)[0]
        tagged = await wait_until(lambda: delivered(odoo_standin, "<pp3@x>"), "unauthenticated pipe mail tagged")
        assert "dmarc=fail" in our_results(tagged)[0]

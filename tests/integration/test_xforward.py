"""XFORWARD on real listeners: offered and believed only for trusted relays, one transaction at a time, stored in
the spool entry and shown in the Received line. (Postfix sending it for real: tests/system/test_postfix_lmtp.py.)"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from gateway.intake import xforward
from gateway.odoo.headers import delivery_headers
from tests.integration.smtpwire import SmtpWire
from tests.integration.test_intake_smtp import OURS, listening


def transaction(w: SmtpWire, mid: str) -> int:
    assert w.cmd("MAIL FROM:<s@example.org>")[0] == 250
    assert w.cmd(f"RCPT TO:<a@{OURS}>")[0] == 250
    assert w.cmd("DATA")[0] == 354
    w.send(f"Subject: x\r\nMessage-Id: {mid}\r\n\r\nbody\r\n.\r\n".encode())
    return w.reply()[0]


async def test_lmtp_unix_socket_from_trusted_relay(tmp_path: Path) -> None:
    sock = tmp_path / "lmtp.sock"
    async with listening(tmp_path, kind="lmtp", bind=f"unix:{sock}", trusted_relays=["unix"]) as (_lst, spool):
        def session() -> list[int]:
            w = SmtpWire.connect(str(sock))
            try:
                w.reply()
                code, caps = w.cmd("LHLO postfix.test")
                assert code == 250 and "XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE" in caps
                codes = [w.cmd("XFORWARD NAME=mail.sender.test ADDR=IPV6:2001:db8::7 PORT=50123 PROTO=ESMTPS")[0]]
                # Values are xtext; [UNAVAILABLE] is "not known"; attributes accumulate over several commands.
                codes.append(w.cmd("XFORWARD HELO=helo+2Bsender.test IDENT=4Xy1Z SOURCE=remote NAME=[UNAVAILABLE]")[0])
                codes.append(w.cmd("XFORWARD BOGUS=1")[0])
                codes.append(w.cmd("XFORWARD ADDR=not-an-address")[0])
                codes.append(transaction(w, "<xf-1@x>"))
                codes.append(transaction(w, "<xf-2@x>"))  # the next transaction: forgotten after DATA
                assert w.cmd("XFORWARD ADDR=192.0.2.9")[0] == 250
                assert w.cmd("RSET")[0] == 250  # ... and on RSET
                codes.append(transaction(w, "<xf-3@x>"))
                assert w.cmd("XFORWARD ADDR=192.0.2.10")[0] == 250
                assert w.cmd("MAIL FROM:<s@example.org>")[0] == 250
                codes.append(w.cmd("XFORWARD ADDR=192.0.2.11")[0])  # not inside a transaction
                w.cmd("QUIT")
                return codes
            finally:
                w.close()

        assert await asyncio.to_thread(session) == [250, 250, 501, 501, 250, 250, 250, 503]
        entries = {e.message_id: e for e in await spool.list()}
        client = entries["<xf-1@x>"].envelope.client
        assert client == {"addr": "2001:db8::7", "port": "50123", "proto": "ESMTPS", "helo": "helo+sender.test",
                          "ident": "4Xy1Z", "source": "REMOTE"}
        assert entries["<xf-2@x>"].envelope.client is None
        assert entries["<xf-3@x>"].envelope.client is None
        assert entries["<xf-1@x>"].envelope.peer == "unix"  # the socket peer stays what it was


async def test_tcp_trusts_only_the_configured_networks(tmp_path: Path) -> None:
    async with listening(tmp_path, trusted_relays=["127.0.0.1/32"]) as (listener, spool):
        def session(source: str, mid: str) -> tuple[bool, int]:
            s = socket.create_connection(("127.0.0.1", listener.port), timeout=10, source_address=(source, 0))
            w = SmtpWire(s)
            try:
                w.reply()
                _, caps = w.cmd("EHLO relay.test")
                code = w.cmd("XFORWARD ADDR=198.51.100.4 HELO=forged.test")[0]
                assert transaction(w, mid) == 250
                w.cmd("QUIT")
                return any(c.startswith("XFORWARD") for c in caps), code
            finally:
                w.close()

        assert await asyncio.to_thread(session, "127.0.0.1", "<t-1@x>") == (True, 250)
        assert await asyncio.to_thread(session, "127.0.0.2", "<t-2@x>") == (False, 550)
        entries = {e.message_id: e for e in await spool.list()}
        assert entries["<t-1@x>"].envelope.client == {"addr": "198.51.100.4", "helo": "forged.test"}
        assert entries["<t-2@x>"].envelope.client is None


async def test_untrusted_by_default(tmp_path: Path) -> None:
    async with listening(tmp_path) as (listener, _spool):
        def session() -> tuple[list[str], int]:
            w = SmtpWire.connect(("127.0.0.1", listener.port))
            try:
                w.reply()
                _, caps = w.cmd("EHLO relay.test")
                return caps, w.cmd("XFORWARD ADDR=198.51.100.4")[0]
            finally:
                w.close()

        caps, code = await asyncio.to_thread(session)
        assert not any("XFORWARD" in c for c in caps) and code == 550


def test_sender_authentication_judges_the_forwarded_client() -> None:
    """SPF must judge the client Postfix received the message from, which XFORWARD names (gateway/auth/intake.py)."""
    from types import SimpleNamespace

    from gateway.auth.client import networks
    from gateway.auth.intake import IntakeAuth

    auth = SimpleNamespace(_relays=networks(["127.0.0.1"]))  # the one attribute _client reads
    envelope = SimpleNamespace(mail_from=None)
    assert xforward.command(xforward.TrustedRelays(["unix"]), "", envelope, "ADDR=192.0.2.7 HELO=mail.test") \
        == "250 2.0.0 Ok"
    session = SimpleNamespace(peer="", host_name="postfix.local")
    client = IntakeAuth._client(auth, session, envelope)  # type: ignore[arg-type]
    assert (client.ip, client.helo, client.via) == ("192.0.2.7", "mail.test", "xforward")
    plain = IntakeAuth._client(auth, session, SimpleNamespace(mail_from=None))  # type: ignore[arg-type]
    assert plain.via == "unknown"  # a unix socket without XFORWARD: the Received header decides later


def test_received_line_names_the_original_client() -> None:
    block = delivery_headers(mail_from="s@example.org", recipients=["a@example.com"], queue_id="Q1",
                             received_at=0, intake="lmtp", helo="postfix.local", peer="unix", hostname="gw.test",
                             client={"addr": "192.0.2.7", "name": "mail.sender.test", "helo": "helo.sender.test",
                                     "proto": "ESMTPS"}).decode()
    expected = "Received: from helo.sender.test (mail.sender.test [192.0.2.7])\r\n\tby gw.test (mailgw) with ESMTPS"
    assert expected in block
    plain = delivery_headers(mail_from="s@example.org", recipients=["a@example.com"], queue_id="Q1", received_at=0,
                             intake="lmtp", helo="postfix.local", peer="unix", hostname="gw.test").decode()
    assert "Received: from postfix.local (unix)\r\n\tby gw.test (mailgw) with LMTP" in plain

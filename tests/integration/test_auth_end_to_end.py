"""Sender authentication end to end: the daemon (SMTP and LMTP listeners, spool, worker) with a stand-in Odoo and
the loopback DNS server. Clients connect from different loopback addresses, so SPF sees different hosts.

Three ways to impersonate someone Odoo trusts by the From header — a known partner writing to an alias whose
contact policy is `partners`, a reply posted into an existing thread, an internal user — are refused, held or
tagged as each instance's policy says; the same messages properly authenticated are delivered with
`dmarc=pass`; an Authentication-Results header forged with the gateway's authserv-id never reaches Odoo.
"""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.auth.held import release
from gateway.config import parse_config
from gateway.daemon import Daemon
from gateway.spool import State
from tests.integration.auth_zone import ORIGIN_IP, STRANGER_IP, Keys, message
from tests.integration.dnsserver import DnsTestServer, mail_zone
from tests.integration.smtpwire import SmtpWire
from tests.odoo_standin import OdooStandin, odoo_instance_config
from tests.waiting import wait_until

AUTHSERV = "gw.example.com"
FORGED_AR = f"Authentication-Results: {AUTHSERV}; spf=pass; dkim=pass; dmarc=pass header.from=customer.test\r\n"
THREAD_ID = "<ticket-7@example.com>"
CORP_IP = "127.0.0.30"  # example.com's own outbound server


@pytest.fixture(scope="module")
def keys() -> Keys:
    k = Keys()
    k.add_rsa("customer.test", "c1")
    k.add_ed25519("example.com", "corp")
    return k


@pytest.fixture(scope="module")
def dns(keys: Keys) -> Any:
    zones = [
        # A customer with SPF and DKIM but DMARC p=none, as most are: no policy refuses a forgery of it.
        mail_zone("customer.test", spf=f"v=spf1 ip4:{ORIGIN_IP} -all", dmarc="v=DMARC1; p=none",
                  dkim=keys.selectors("customer.test")),
        mail_zone("example.com", spf=f"v=spf1 ip4:{CORP_IP} -all", dmarc="v=DMARC1; p=none",
                  dkim=keys.selectors("example.com")),
        mail_zone("strict.test", spf=f"v=spf1 ip4:{ORIGIN_IP} -all", dmarc="v=DMARC1; p=reject"),
        mail_zone("slow.test", dmarc="v=DMARC1; p=reject"),  # its policy is never answered
    ]
    with DnsTestServer(*zones, drop=[("_dmarc.slow.test", "TXT")]) as srv:
        yield srv


def send(port: int, source: str, mail_from: str, rcpts: list[str], raw: bytes) -> tuple[int, str]:
    """One SMTP transaction from `source`; (code, text) of the DATA answer (or of the first refusal)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20, source_address=(source, 0)) as client:
        client.ehlo("client.test")
        client.mail(mail_from)
        for r in rcpts:
            client.rcpt(r)
        code, text = client.data(raw)
        return code, text.decode()


@contextlib.asynccontextmanager
async def running(tmp_path: Path, standin: OdooStandin, dns: DnsTestServer, policy: dict[str, str],
                  **auth: Any) -> AsyncIterator[Daemon]:
    cfg = parse_config({
        "state_dir": str(tmp_path / "state"),
        "listeners": [{"kind": "smtp", "bind": "127.0.0.1:0", "hostname": AUTHSERV},
                      {"kind": "lmtp", "bind": f"unix:{tmp_path / 'lmtp.sock'}", "hostname": AUTHSERV}],
        "odoo": [odoo_instance_config(standin, tmp_path, timeout="5s", auth=policy)],
        "delivery": {"poll_interval": "0.05s", "retry_initial": "0.1s"},
        "auth": {"enabled": True, "authserv_id": AUTHSERV, "nameservers": [dns.nameserver], "dns_timeout": "1s",
                 **auth},
    })
    daemon = Daemon(cfg)
    await daemon.start()
    try:
        await wait_until(lambda: daemon.inbound.directory.current.is_ready("main"), "directory")
        yield daemon
    finally:
        await daemon.drain()


def delivered(standin: OdooStandin, mid: str) -> bytes | None:
    found = [c.message for c in standin.message_calls() if c.message_id == mid]
    return found[-1] if found else None


def our_results(raw: bytes) -> list[str]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    fields = head.replace("\r\n\t", " ").replace("\r\n ", " ").split("\r\n")
    return [f for f in fields if f.lower().startswith("authentication-results:") and AUTHSERV in f.split(";")[0]]


def cases(keys: Keys) -> dict[str, tuple[str, str, bytes, bytes]]:
    """name -> (rcpt, envelope sender, forged message, the same properly authenticated)."""
    partner = message("Carol <carol@customer.test>", to="support@example.com", mid="<p1@customer.test>",
                      extra=FORGED_AR)
    reply = message("Carol <carol@customer.test>", to="catchall@example.com", subject="Re: ticket",
                    mid="<r1@customer.test>", extra=f"In-Reply-To: {THREAD_ID}\r\nReferences: {THREAD_ID}\r\n")
    boss = message("Boss <boss@example.com>", to="sales@example.com", subject="Pay this invoice",
                   mid="<b1@example.com>")
    signed = {"partner": keys.sign(partner.replace(b"<p1@", b"<p2@"), "customer.test", "c1"),
              "reply": keys.sign(reply.replace(b"<r1@", b"<r2@"), "customer.test", "c1"),
              "internal": keys.sign(boss.replace(b"<b1@", b"<b2@"), "example.com", "corp")}
    return {"partner": ("support@example.com", "carol@customer.test", partner, signed["partner"]),
            "reply": ("catchall@example.com", "carol@customer.test", reply, signed["reply"]),
            "internal": ("sales@example.com", "boss@example.com", boss, signed["internal"])}


@pytest.mark.parametrize("action", ["refuse", "hold", "tag"])
async def test_impersonation_refused_held_or_tagged(tmp_path: Path, odoo_standin: OdooStandin,
                                                    dns: DnsTestServer, keys: Keys, action: str) -> None:
    odoo_standin.add_user("boss@example.com")
    odoo_standin.add_message(THREAD_ID, "helpdesk.ticket", 7)
    policy = {"internal_users": action, "partners": action, "replies": action}
    async with running(tmp_path, odoo_standin, dns, policy) as daemon:
        port = daemon.listeners[0].port
        assert daemon.spool is not None
        for name, (rcpt, sender, forged, good) in cases(keys).items():
            # The real sender's own server (or example.com's) with its DKIM signature.
            source = CORP_IP if name == "internal" else ORIGIN_IP
            code, _ = await asyncio.to_thread(send, port, source, sender, [rcpt], good)
            assert code == 250, name
            mid = good.split(b"Message-Id: ")[1].split(b"\r\n")[0].decode()
            ok = await wait_until(lambda mid=mid: delivered(odoo_standin, mid), f"{name} delivered")
            [ar] = our_results(ok)
            assert "dmarc=pass" in ar
            assert ok.index(b"Authentication-Results: " + AUTHSERV.encode()) < ok.index(b"\r\nFrom: ")
            # The forgery, from a stranger's address.
            code, text = await asyncio.to_thread(send, port, STRANGER_IP, sender, [rcpt], forged)
            fmid = forged.split(b"Message-Id: ")[1].split(b"\r\n")[0].decode()
            if action == "refuse":
                assert (code, text[:5]) == (550, "5.7.1"), (name, code, text)
                assert "did not authenticate" in text
                continue
            assert code == 250, (name, code, text)
            if action == "hold":
                entry = await wait_until(lambda fmid=fmid: _held(daemon, fmid), f"{name} held")
                assert "sender authentication" in (entry.last_error or "")
                assert delivered(odoo_standin, fmid) is None
                continue
            got = await wait_until(lambda fmid=fmid: delivered(odoo_standin, fmid), f"{name} tagged")
            [ar] = our_results(got)
            assert "dmarc=fail" in ar and "spf=fail" in ar  # delivered, with the verdict
        # A forged Authentication-Results with our authserv-id never reached Odoo.
        for call in odoo_standin.message_calls():
            assert call.message is not None and len(our_results(call.message)) == 1
            assert b"dmarc=pass header.from=customer.test" not in call.message


async def _held(daemon: Daemon, mid: str) -> Any:
    assert daemon.spool is not None
    return next((e for e in await daemon.spool.list(state=State.HELD) if e.message_id == mid), None)


def lmtp(path: Path, mail_from: str, rcpts: list[str], raw: bytes) -> dict[str, tuple[int, str]]:
    """One LMTP transaction on the unix socket, as Postfix's lmtp client does it: the answer per recipient."""
    w = SmtpWire.connect(str(path))
    try:
        w.reply()
        for cmd in ["LHLO postfix.example.com", f"MAIL FROM:<{mail_from}>", *(f"RCPT TO:<{r}>" for r in rcpts),
                    "DATA"]:
            w.send(cmd.encode() + b"\r\n")
            w.reply()
        w.send(raw.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        return {r: (code, " ".join(text)) for r in rcpts for code, text in [w.reply()]}
    finally:
        w.sock.close()


async def test_defaults_release_lmtp_relays_and_temperror(tmp_path: Path, odoo_standin: OdooStandin,
                                                          dns: DnsTestServer, keys: Keys) -> None:
    odoo_standin.add_user("boss@example.com")
    async with running(tmp_path, odoo_standin, dns, {}, trusted_relays=["127.0.0.1"]) as daemon:
        port = daemon.listeners[0].port
        assert daemon.spool is not None
        # DMARC p=reject of the From domain: refused at the end of DATA by default.
        code, text = await asyncio.to_thread(send, port, STRANGER_IP, "x@strict.test", ["sales@example.com"],
                                             message("a@strict.test", mid="<s1@strict.test>"))
        assert code == 550 and "p=reject" in text
        # Internal-user impersonation is held by default, and released by the operator it is delivered.
        forged = message("Boss <boss@example.com>", to="sales@example.com", mid="<b9@example.com>", extra=FORGED_AR)
        code, _ = await asyncio.to_thread(send, port, STRANGER_IP, "boss@example.com", ["sales@example.com"], forged)
        assert code == 250
        entry = await wait_until(lambda: _held(daemon, "<b9@example.com>"), "held")
        await release(daemon.spool, entry.queue_id)
        got = await wait_until(lambda: delivered(odoo_standin, "<b9@example.com>"), "released and delivered")
        [ar] = our_results(got)
        assert "dmarc=fail" in ar and b"header.from=customer.test" not in got
        # LMTP from Postfix (a trusted relay behind a unix socket): the client is the one Postfix's Received
        # names, and each recipient gets its own answer.
        relayed = (f"Received: from mail.customer.test (mail.customer.test [{ORIGIN_IP}])\r\n"
                   "\tby mx.example.com (Postfix) with ESMTPS id 4AbC; Mon, 02 Nov 2026 10:00:00 +0000\r\n").encode()
        answers = await asyncio.to_thread(lmtp, tmp_path / "lmtp.sock", "carol@customer.test",
                                          ["sales@example.com", "support@example.com"],
                                          relayed + message("carol@customer.test", mid="<l1@customer.test>"))
        assert [a[0] for a in answers.values()] == [250, 250]
        got = await wait_until(lambda: delivered(odoo_standin, "<l1@customer.test>"), "relayed delivered")
        assert "spf=pass" in our_results(got)[0] and "dmarc=pass" in our_results(got)[0]
        forged_lmtp = await asyncio.to_thread(lmtp, tmp_path / "lmtp.sock", "x@strict.test",
                                              ["sales@example.com", "support@example.com"],
                                              message("a@strict.test", mid="<l2@strict.test>"))
        assert [a[0] for a in forged_lmtp.values()] == [550, 550]
        # A DNS server that does not answer: 451, never a refusal.
        code, text = await asyncio.to_thread(send, port, ORIGIN_IP, "x@nowhere.test", ["sales@example.com"],
                                             message("a@slow.test", mid="<t1@slow.test>"))
        assert code == 451 and text.startswith("4.7.0")

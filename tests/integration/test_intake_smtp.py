"""SMTP and LMTP listeners against real peers (Postfix smtp-source, swaks, smtplib, raw sockets)."""

from __future__ import annotations

import asyncio
import shutil
import smtplib
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.admission import AdmissionPolicy
from gateway.config import ListenerConfig, TlsConfig
from gateway.intake.smtp import SmtpListener
from gateway.spool import SqliteSpool, State
from tests.integration.smtpwire import SmtpWire, wire

OURS = "example.com"


def rcpt_check(rcpt: str, sender: str, peer: str) -> str | None:
    if rcpt.lower().endswith("@" + OURS):
        return None if not rcpt.lower().startswith("unknown") else "550 5.1.1 No such recipient here"
    return "550 5.7.1 Relaying denied"


@asynccontextmanager
async def listening(tmp_path: Path, **overrides: Any) -> AsyncIterator[tuple[SmtpListener, SqliteSpool]]:
    spool = await SqliteSpool.open(tmp_path / "spool.db")
    cfg = ListenerConfig.model_validate({"kind": "smtp", "bind": "127.0.0.1:0", **overrides})
    check = AdmissionPolicy.submission_check(cfg.auth is not None) if cfg.kind == "submission" else rcpt_check
    listener = SmtpListener(cfg, spool=spool, rcpt_check=check, hostname="mx.test")
    await listener.start()
    try:
        yield listener, spool
    finally:
        await listener.drain(2)
        await spool.close()


def needs(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (./run test installs it when run as root)")


async def test_smtp_source_many_sessions_all_spooled(tmp_path: Path) -> None:
    needs("smtp-source")
    async with listening(tmp_path) as (listener, spool):
        proc = await asyncio.create_subprocess_exec(
            "smtp-source", "-s", "10", "-m", "300", "-l", "4096", "-f", "a@example.org", "-t", f"b@{OURS}",
            f"127.0.0.1:{listener.port}", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err
        entries = await spool.list(limit=1000)
        assert len(entries) == 300
        assert all(e.state == State.RECEIVED and e.envelope.rcpt_tos == (f"b@{OURS}",) for e in entries)
        assert len({e.message_id for e in entries}) == 300
        # Group commit: 10 concurrent sessions did not need 300 fsyncs.
        assert spool.stats["commit_batches"] <= 300


async def test_lmtp_three_recipients_one_refused_two_replies(tmp_path: Path) -> None:
    async with listening(tmp_path, kind="lmtp") as (listener, spool):
        def session() -> list[tuple[int, list[str]]]:
            with wire(("127.0.0.1", listener.port)) as w:
                assert w.reply()[0] == 220
                code, caps = w.cmd("LHLO client.test")
                assert code == 250 and "PIPELINING" in caps and "ENHANCEDSTATUSCODES" in caps
                assert w.cmd("MAIL FROM:<s@example.org>")[0] == 250
                assert w.cmd(f"RCPT TO:<one@{OURS}>")[0] == 250
                assert w.cmd(f"RCPT TO:<unknown@{OURS}>")[0] == 550
                assert w.cmd(f"RCPT TO:<two@{OURS}>")[0] == 250
                assert w.cmd("DATA")[0] == 354
                w.send(b"Subject: lmtp\r\nMessage-Id: <lmtp-1@x>\r\n\r\nbody\r\n.\r\n")
                replies = [w.reply(), w.reply()]
                # Nothing else may follow before the next command: a third reply would desynchronise Postfix.
                assert w.cmd("NOOP")[0] == 250
                w.cmd("QUIT")
                return replies

        replies = await asyncio.to_thread(session)
        assert [r[0] for r in replies] == [250, 250]
        assert f"<one@{OURS}>" in replies[0][1][0] and f"<two@{OURS}>" in replies[1][1][0]
        [entry] = await spool.list()
        assert entry.envelope.rcpt_tos == (f"one@{OURS}", f"two@{OURS}") and entry.message_id == "<lmtp-1@x>"


async def test_lmtp_smtp_source_pipelined(tmp_path: Path) -> None:
    needs("smtp-source")
    async with listening(tmp_path, kind="lmtp") as (listener, spool):
        proc = await asyncio.create_subprocess_exec(
            "smtp-source", "-L", "-s", "4", "-m", "40", "-r", "3", "-d", "-f", "a@example.org", "-t", f"r@{OURS}",
            f"127.0.0.1:{listener.port}", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err
        entries = await spool.list()
        assert len(entries) == 40 and all(len(e.envelope.rcpt_tos) == 3 for e in entries)


async def test_lmtp_on_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "lmtp.sock"
    async with listening(tmp_path, kind="lmtp", bind=f"unix:{sock}") as (_listener, spool):
        def send() -> dict[str, tuple[int, bytes]]:
            with smtplib.LMTP(str(sock)) as client:
                return client.sendmail("a@example.org", [f"x@{OURS}"], b"Subject: u\r\n\r\nunix\r\n")

        assert await asyncio.to_thread(send) == {}
        assert len(await spool.list()) == 1


async def test_null_sender_and_unusual_addresses(tmp_path: Path) -> None:
    async with listening(tmp_path) as (listener, spool):
        def session() -> list[int]:
            with wire(("127.0.0.1", listener.port)) as w:
                w.reply()
                w.cmd("EHLO c")
                codes = [w.cmd("MAIL FROM:<> SIZE=100")[0], w.cmd(f"RCPT TO:<a@{OURS}>")[0], w.cmd("RSET")[0]]
                # Quoted local part and a source route go through aiosmtpd's full parser.
                codes += [w.cmd('MAIL FROM:<"john doe"@example.org>')[0], w.cmd(f"RCPT TO:<@relay.test:b@{OURS}>")[0]]
                codes += [w.cmd("DATA")[0]]
                w.send(b"Subject: n\r\n\r\nx\r\n.\r\n")
                codes.append(w.reply()[0])
                return codes

        assert await asyncio.to_thread(session) == [250, 250, 250, 250, 250, 354, 250]
        [entry] = await spool.list()
        assert entry.envelope.mail_from == '"john doe"@example.org' and entry.envelope.rcpt_tos == (f"b@{OURS}",)

        def null_sender() -> dict[str, tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", listener.port) as client:
                return client.sendmail("", [f"c@{OURS}"], b"Subject: dsn\r\n\r\nx\r\n")

        assert await asyncio.to_thread(null_sender) == {}
        assert (await spool.list())[-1].envelope.mail_from == ""


async def test_foreign_recipient_refused_no_relay(tmp_path: Path) -> None:
    needs("swaks")
    async with listening(tmp_path) as (listener, spool):
        proc = await asyncio.create_subprocess_exec(
            "swaks", "--server", "127.0.0.1", "--port", str(listener.port), "--from", "a@example.org",
            "--to", "victim@elsewhere.test", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = await proc.communicate()
        assert b"550 5.7.1" in out and proc.returncode != 0
        assert await spool.list() == []


async def test_size_advertised_and_enforced(tmp_path: Path) -> None:
    async with listening(tmp_path, max_message_size=10_000) as (listener, spool):
        def session() -> None:
            with wire(("127.0.0.1", listener.port)) as w:
                w.reply()
                assert "SIZE 10000" in w.cmd("EHLO c")[1]
                code, text = w.cmd("MAIL FROM:<a@example.org> SIZE=20000")
                assert code == 552 and text[0].startswith("5.3.4")
                assert w.cmd("MAIL FROM:<a@example.org>")[0] == 250
                assert w.cmd(f"RCPT TO:<b@{OURS}>")[0] == 250
                assert w.cmd("DATA")[0] == 354
                w.send(b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 50 + b".\r\n")
                code, text = w.reply()
                assert code == 552 and text[0].startswith("5.3.4")
                # The session goes on after the refusal.
                assert w.cmd("RSET")[0] == 250

        await asyncio.to_thread(session)
        assert await spool.list() == []


async def test_too_many_recipients(tmp_path: Path) -> None:
    async with listening(tmp_path, max_recipients=3) as (listener, _spool):
        def session() -> list[int]:
            with wire(("127.0.0.1", listener.port)) as w:
                w.reply()
                w.cmd("EHLO c")
                w.cmd("MAIL FROM:<a@example.org>")
                return [w.cmd(f"RCPT TO:<r{i}@{OURS}>")[0] for i in range(5)]

        assert await asyncio.to_thread(session) == [250, 250, 250, 452, 452]


def send_data(port: int, payload: bytes) -> tuple[int, list[str]]:
    with wire(("127.0.0.1", port)) as w:
        w.reply()
        w.cmd("EHLO c")
        w.cmd("MAIL FROM:<a@example.org>")
        w.cmd(f"RCPT TO:<b@{OURS}>")
        assert w.cmd("DATA")[0] == 354
        w.send(payload)
        result = w.reply()
        assert w.cmd("NOOP")[0] == 250  # the session is still in sync
        return result


async def test_one_megabyte_line_refused_cleanly(tmp_path: Path) -> None:
    async with listening(tmp_path) as (listener, spool):
        code, text = await asyncio.to_thread(send_data, listener.port,
                                             b"Subject: l\r\n\r\n" + b"y" * 1_000_000 + b"\r\n.\r\n")
        assert code == 500 and text[0].startswith("5.5.2")
        assert await spool.list() == []


async def test_nul_bytes_and_non_utf8_headers_spooled_intact(tmp_path: Path) -> None:
    body = b"Subject: =?iso-8859-1?q?caf=E9?= \xe9t\xe9\r\nFrom: J\xfcrgen <j@example.org>\r\n\r\nnul:\x00\x00 end\r\n"
    async with listening(tmp_path) as (listener, spool):
        code, _ = await asyncio.to_thread(send_data, listener.port, body + b".\r\n")
        assert code == 250
        [entry] = await spool.list()
        assert await spool.raw(entry.queue_id) == body
        assert entry.message_id_generated


@pytest.mark.parametrize("smuggle", [
    b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\r\n\x00.\r\n",
])
async def test_smuggling_sequences_never_split_a_message(tmp_path: Path, smuggle: bytes) -> None:
    payload = (b"Subject: first\r\n\r\nhello" + smuggle
               + b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@" + OURS.encode() + b">\r\nDATA\r\n"
               + b"Subject: smuggled\r\n\r\nevil\r\n.\r\n")
    async with listening(tmp_path) as (listener, spool):
        code, _ = await asyncio.to_thread(send_data, listener.port, payload)
        assert code == 250
        entries = await spool.list()
        assert len(entries) == 1
        raw = await spool.raw(entries[0].queue_id)
        assert b"smuggled" in raw and entries[0].envelope.mail_from == "a@example.org"


async def test_dot_stuffing_and_empty_message(tmp_path: Path) -> None:
    async with listening(tmp_path) as (listener, spool):
        assert (await asyncio.to_thread(send_data, listener.port, b"Subject: d\r\n\r\n..dot\r\n...\r\n.\r\n"))[0] == 250
        assert (await asyncio.to_thread(send_data, listener.port, b".\r\n"))[0] == 250
        raws = [await spool.raw(e.queue_id) for e in await spool.list()]
        assert raws == [b"Subject: d\r\n\r\n.dot\r\n..\r\n", b""]


async def test_stalled_client_is_dropped_and_others_served(tmp_path: Path) -> None:
    async with listening(tmp_path, idle_timeout=0.5) as (listener, spool):
        def stall() -> bytes:
            w = SmtpWire.connect(("127.0.0.1", listener.port))
            w.reply()
            w.cmd("EHLO c")
            w.cmd("MAIL FROM:<a@example.org>")
            w.cmd(f"RCPT TO:<b@{OURS}>")
            w.cmd("DATA")
            w.send(b"Subject: half")  # ... and nothing more
            try:
                said = w.sock.recv(100)  # the server says why and hangs up
                return said + w.sock.recv(100) if said else said
            finally:
                w.close()

        staller = asyncio.create_task(asyncio.to_thread(stall))
        assert (await asyncio.to_thread(send_data, listener.port, b"Subject: ok\r\n\r\nfine\r\n.\r\n"))[0] == 250
        said = await asyncio.wait_for(staller, 10)
        assert said.startswith(b"421 4.4.2 mx.test") and said.endswith(b"\r\n")
        assert len(await spool.list()) == 1  # the half message was never acknowledged nor stored


async def test_smtputf8_and_8bitmime(tmp_path: Path) -> None:
    async with listening(tmp_path) as (listener, spool):
        def session() -> None:
            with wire(("127.0.0.1", listener.port)) as w:
                w.reply()
                caps = w.cmd("EHLO c")[1]
                assert "SMTPUTF8" in caps and "8BITMIME" in caps
                assert w.cmd("MAIL FROM:<jürgen@exämple.org> SMTPUTF8 BODY=8BITMIME")[0] == 250
                assert w.cmd(f"RCPT TO:<b@{OURS}>")[0] == 250
                assert w.cmd("DATA")[0] == 354
                w.send("Subject: ünïcode\r\n\r\nbody ü\r\n.\r\n".encode())
                assert w.reply()[0] == 250

        await asyncio.to_thread(session)
        [entry] = await spool.list()
        assert entry.envelope.mail_from == "jürgen@exämple.org"
        assert "ünïcode".encode() in await spool.raw(entry.queue_id)


async def test_banner_hides_version(tmp_path: Path) -> None:
    async with listening(tmp_path, banner="ESMTP") as (listener, _spool):
        def greet() -> tuple[int, list[str]]:
            with wire(("127.0.0.1", listener.port)) as w:
                return w.reply()

        code, text = await asyncio.to_thread(greet)
        assert code == 220 and text == ["mx.test ESMTP"]


async def test_max_sessions_answers_421(tmp_path: Path) -> None:
    async with listening(tmp_path, max_sessions=2) as (listener, _spool):
        def crowd() -> int:
            a = SmtpWire.connect(("127.0.0.1", listener.port))
            b = SmtpWire.connect(("127.0.0.1", listener.port))
            a.reply()
            b.reply()
            c = SmtpWire.connect(("127.0.0.1", listener.port))
            try:
                return c.reply()[0]
            finally:
                for w in (a, b, c):
                    w.close()

        assert await asyncio.to_thread(crowd) == 421


async def test_starttls_with_swaks(tmp_path: Path) -> None:
    needs("swaks")
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("mx.test", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    tls = TlsConfig(cert_file=tmp_path / "server.pem", key_file=tmp_path / "server.pem", required=True)
    async with listening(tmp_path, tls=tls.model_dump()) as (listener, spool):
        # Without TLS the required-TLS listener refuses the transaction.
        def plain() -> int:
            with wire(("127.0.0.1", listener.port)) as w:
                w.reply()
                w.cmd("EHLO c")
                return w.cmd("MAIL FROM:<a@example.org>")[0]

        assert await asyncio.to_thread(plain) == 530
        proc = await asyncio.create_subprocess_exec(
            "swaks", "--server", "127.0.0.1", "--port", str(listener.port), "--tls", "--tls-verify",
            "--tls-ca-path", str(tmp_path / "ca.pem"), "--tls-sni", "mx.test", "--from", "a@example.org",
            "--to", f"b@{OURS}", "--helo", "client.test", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = await proc.communicate()
        assert proc.returncode == 0, out.decode()
        [entry] = await spool.list()
        assert entry.envelope.source == {"tls": True}

        def smtplib_tls() -> None:
            ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
            with smtplib.SMTP("127.0.0.1", listener.port) as client:
                client.starttls(context=ctx)
                client.sendmail("a@example.org", [f"c@{OURS}"], b"Subject: tls\r\n\r\nx\r\n")

        await asyncio.to_thread(smtplib_tls)
        assert len(await spool.list()) == 2


async def test_spool_failure_answers_451_never_250(tmp_path: Path) -> None:
    async with listening(tmp_path) as (listener, spool):
        await spool.close()  # the spool is gone: nothing can be made durable
        code, text = await asyncio.to_thread(send_data, listener.port, b"Subject: x\r\n\r\ny\r\n.\r\n")
        assert code == 451 and text[0].startswith("4.3.0")


async def test_submission_requires_auth_over_tls_and_spools_outbound(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    ca.issue_cert("mx.test").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    (tmp_path / "users").write_text("# user:password\nodoo:s3cret\n")
    from gateway.spool import Direction

    async with listening(tmp_path, kind="submission", auth={"users_file": str(tmp_path / "users")},
                         tls={"cert_file": str(tmp_path / "server.pem"), "key_file": str(tmp_path / "server.pem")}
                         ) as (listener, spool):
        def submit(password: str) -> dict[str, tuple[int, bytes]]:
            ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
            with smtplib.SMTP("127.0.0.1", listener.port) as client:
                client.ehlo("odoo.test")
                client._host = "mx.test"  # certificate name (smtplib takes it from the connect host)
                client.starttls(context=ctx)
                client.login("odoo", password)
                return client.sendmail("bounce@example.com", ["anyone@anywhere.test"], b"Subject: out\r\n\r\nx\r\n")

        def unauthenticated() -> int:
            with wire(("127.0.0.1", listener.port)) as w:
                w.reply()
                w.cmd("EHLO c")
                return w.cmd("MAIL FROM:<a@example.com>")[0]

        assert await asyncio.to_thread(unauthenticated) == 530
        with pytest.raises(smtplib.SMTPAuthenticationError):
            await asyncio.to_thread(submit, "wrong")
        assert await asyncio.to_thread(submit, "s3cret") == {}
        [entry] = await spool.list()
        assert entry.direction == Direction.OUTBOUND and entry.state == State.OUTGOING
        assert entry.envelope.rcpt_tos == ("anyone@anywhere.test",)


async def test_end_of_data_refusal_is_per_recipient_in_lmtp(tmp_path: Path) -> None:
    spool = await SqliteSpool.open(tmp_path / "spool.db")
    cfg = ListenerConfig(kind="lmtp", bind="127.0.0.1:0")

    def auto_to_alias(raw: bytes, rcpts: tuple[str, ...]) -> list[str | None]:
        auto = b"Auto-Submitted: auto-replied" in raw
        return ["550 5.7.1 auto-replies are not accepted here" if auto and r.startswith("alias") else None
                for r in rcpts]

    listener = SmtpListener(cfg, spool=spool, rcpt_check=rcpt_check, hostname="mx.test", message_check=auto_to_alias)
    await listener.start()
    try:
        def session(body: bytes) -> list[int]:
            with wire(("127.0.0.1", listener.port)) as w:
                w.reply()
                w.cmd("LHLO c")
                w.cmd("MAIL FROM:<ooo@example.org>")
                w.cmd(f"RCPT TO:<alias@{OURS}>")
                w.cmd(f"RCPT TO:<person@{OURS}>")
                w.cmd("DATA")
                w.send(body + b".\r\n")
                return [w.reply()[0], w.reply()[0]]

        assert await asyncio.to_thread(session, b"Auto-Submitted: auto-replied\r\nSubject: OOO\r\n\r\naway\r\n") == [
            550, 250]
        [entry] = await spool.list()
        assert entry.envelope.rcpt_tos == (f"person@{OURS}",)  # stored only for the recipient that took it
        assert await asyncio.to_thread(session, b"Subject: normal\r\n\r\nhello\r\n") == [250, 250]
    finally:
        await listener.drain(1)
        await spool.close()


async def test_help_noop_rset_vrfy_and_unknown_commands(tmp_path: Path) -> None:
    async with listening(tmp_path) as (listener, _spool):
        def session() -> list[tuple[int, list[str]]]:
            with wire(("127.0.0.1", listener.port)) as w:
                w.reply()
                w.cmd("EHLO c")
                return [w.cmd("HELP"), w.cmd("HELP MAIL"), w.cmd("NOOP"), w.cmd("RSET"), w.cmd("VRFY x"),
                        w.cmd("X-UNKNOWN"), w.cmd("MAIL FROM:<a@example.org>"), w.cmd("QUIT")]

        replies = await asyncio.to_thread(session)
        codes = [c for c, _ in replies]
        assert codes == [250, 250, 250, 250, 252, 500, 250, 221]
        assert "DATA" in replies[0][1][0] and "MAIL" in replies[0][1][0] and "Syntax: MAIL" in replies[1][1][0]

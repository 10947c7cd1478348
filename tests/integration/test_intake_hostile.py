"""Hostile SMTP/LMTP clients against a real listener, one test per defect of issue 18 (numbered as there).

Every test runs on uvloop (what `mailgw serve` uses) and on asyncio's loop, and ends by checking that the
listener reported no traceback, no asyncio error and no pending task, and that every session slot is free.
"""

from __future__ import annotations

import asyncio
import select
import socket
import time
from pathlib import Path

import pytest

from tests.integration.hostile import LOOPS, OURS, Watch, run_on, watched
from tests.integration.smtpwire import SmtpWire, wire
from tests.waiting import wait_until

pytestmark = pytest.mark.parametrize("loop", LOOPS)


async def clean(w: Watch) -> None:
    await wait_until(lambda: not w.listener.sessions, "every session slot released")
    assert w.problems() == []


def transaction(w: SmtpWire, *, hello: str = "EHLO client.test", rcpts: tuple[str, ...] = (f"b@{OURS}",)) -> None:
    assert w.reply()[0] == 220
    assert w.cmd(hello)[0] == 250
    assert w.cmd("MAIL FROM:<a@example.org>")[0] == 250
    for r in rcpts:
        assert w.cmd(f"RCPT TO:<{r}>")[0] == 250
    assert w.cmd("DATA")[0] == 354


# 1. An idle timeout ends the session with 421 and a clean teardown; a client that leaves before the greeting
#    frees its slot at once, not at the idle timeout.

def test_1_idle_timeout_says_421_and_tears_down_cleanly(tmp_path: Path, loop: str) -> None:
    async def main() -> None:
        async with watched(tmp_path, idle_timeout=0.3) as w:
            def idle() -> tuple[tuple[int, list[str]], bytes]:
                with wire(w.address) as c:
                    c.reply()
                    c.cmd("EHLO client.test")
                    return c.reply(), c.sock.recv(100)  # nothing sent: the server speaks, then hangs up

            (code, text), rest = await asyncio.to_thread(idle)
            assert code == 421 and text[0].startswith("4.4.2 mx.test") and rest == b""
            await clean(w)

    run_on(loop, main)


def test_1_probes_that_leave_before_the_greeting_free_their_slots(tmp_path: Path, loop: str) -> None:
    async def main() -> None:
        async with watched(tmp_path, idle_timeout=60, max_sessions=5) as w:
            def probes() -> None:
                for _ in range(30):  # six times max_sessions
                    s = socket.create_connection(w.address)
                    s.close()

            await asyncio.to_thread(probes)

            def fresh() -> bytes:
                # Probes still in the accept queue take a slot for the moment their EOF takes to be seen: a
                # fresh client may be told 421 during that moment, never for the 60 s of the idle timeout.
                deadline = time.monotonic() + 5
                while True:
                    with socket.create_connection(w.address, timeout=5) as s:
                        said = s.recv(100)
                    if said.startswith(b"220 ") or time.monotonic() > deadline:
                        return said
                    time.sleep(0.05)

            assert (await asyncio.to_thread(fresh)).startswith(b"220 mx.test")
            await clean(w)

    run_on(loop, main)


# 2. Past max_sessions a client is told 421 (the bug: an assert on the transport type failed under uvloop).

def test_2_max_sessions_answers_421(tmp_path: Path, loop: str) -> None:
    async def main() -> None:
        async with watched(tmp_path, max_sessions=2) as w:
            def crowd() -> list[tuple[int, list[str]]]:
                a, b = SmtpWire.connect(w.address), SmtpWire.connect(w.address)
                try:
                    a.reply()
                    b.reply()
                    replies = []
                    for _ in range(5):
                        with wire(w.address) as c:
                            replies.append(c.reply())
                    return replies
                finally:
                    a.close()
                    b.close()

            replies = await asyncio.to_thread(crowd)
            assert [c for c, _ in replies] == [421] * 5 and replies[0][1][0].startswith("4.3.2 mx.test")
            await clean(w)
            # One warning when the listener fills up, not one per refused connection.
            assert len(w.named("intake.too_many_sessions")) == 1

    run_on(loop, main)


# 3. Malformed addresses are the client's syntax error: 501, never 451.

MALFORMED = ["MAIL FROM:<u@", "MAIL FROM:u@", "MAIL FROM:<u@>", "MAIL FROM:<@example.org>", "MAIL FROM:<a@b@c>",
             "MAIL FROM:<a b@example.org>", "MAIL FROM:<a@example..org>", "MAIL FROM:<.a@example.org>",
             "MAIL FROM:<a\x00b@example.org>", "MAIL FROM:<a@example.org", "MAIL FROM:<<a@example.org>>",
             "RCPT TO:support@", "RCPT TO:<support@>", "RCPT TO:<>", "RCPT TO:<@x.test:>", "VRFY <"]


def test_3_malformed_addresses_answer_501(tmp_path: Path, loop: str) -> None:
    async def main() -> None:
        async with watched(tmp_path) as w:
            def session() -> list[tuple[str, int, str]]:
                out = []
                with wire(w.address) as c:
                    c.reply()
                    c.cmd("EHLO client.test")
                    for command in MALFORMED:
                        if command.startswith("RCPT"):
                            assert c.cmd("MAIL FROM:<a@example.org>")[0] == 250
                        code, text = c.cmd(command)
                        out.append((command, code, text[0]))
                        c.cmd("RSET")
                return out

            for command, code, text in await asyncio.to_thread(session):
                assert code == 501, (command, code, text)
                # An address problem (RFC 3463 X.1.x), or a syntax error when the line has control characters.
                assert text.startswith("5.1." if command.isprintable() else "5.5."), (command, text)
            await clean(w)

    run_on(loop, main)


# 4. 8-bit envelope data is refused at the command that carries it unless SMTPUTF8 was declared; it never
#    reaches the spool as something it cannot store (the bug: 451 at the end of DATA, forever).

def test_4_eight_bit_envelope_refused_at_its_command(tmp_path: Path, loop: str) -> None:
    async def main() -> None:
        async with watched(tmp_path) as w:
            def session() -> dict[str, tuple[int, list[str]]]:
                with wire(w.address) as c:
                    c.reply()
                    c.send(b"EHLO h\xf6st.example\r\n")
                    r = {"ehlo": c.reply()}
                    c.send(b"EHLO h\xc3\xb6st.example\r\n")
                    r["ehlo_utf8"] = c.reply()
                    c.cmd("EHLO client.test")
                    c.send(b"MAIL FROM:<j\xc3\xbcrgen@example.org>\r\n")
                    r["mail"] = c.reply()
                    c.send(b"VRFY <j\xc3\xbcrgen@example.com>\r\n")
                    r["vrfy"] = c.reply()
                    c.send(b"VRFY j\xfc\r\n")
                    r["vrfy_latin1"] = c.reply()
                    c.cmd("MAIL FROM:<a@example.org>")
                    c.send(f"RCPT TO:<j\xfcrgen@{OURS}>\r\n".encode())
                    r["rcpt"] = c.reply()
                    c.cmd("RSET")
                    # SMTPUTF8 declared: UTF-8 is fine, bytes that are not UTF-8 are not.
                    c.send(b"MAIL FROM:<j\xfcrgen@example.org> SMTPUTF8\r\n")
                    r["mail_not_utf8"] = c.reply()
                    c.send(b"MAIL FROM:<j\xc3\xbcrgen@example.org> SMTPUTF8\r\n")
                    r["mail_utf8"] = c.reply()
                    c.send(f"RCPT TO:<b@{OURS}>\r\n".encode())
                    r["rcpt_ok"] = c.reply()
                    r["data"] = c.cmd("DATA")
                    c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
                    r["stored"] = c.reply()
                return r

            r = await asyncio.to_thread(session)
            assert r["ehlo"][0] == 501 and r["ehlo_utf8"][0] == 501
            assert r["mail"][0] == 553 and r["mail"][1][0].startswith("5.6.7")  # RFC 6531/6533
            assert r["vrfy"][0] in (252, 553) and r["vrfy_latin1"][0] == 501
            assert r["rcpt"][0] == 553 and r["rcpt"][1][0].startswith("5.6.7")
            assert r["mail_not_utf8"][0] == 501  # not UTF-8 at all: a syntax error
            assert r["mail_utf8"][0] == 250 and r["rcpt_ok"][0] == 250 and r["stored"][0] == 250
            for code, text in r.values():
                assert not 400 <= code < 500, r  # never "try again later" for the client's own bytes
                assert all(t.isascii() and t.isprintable() for t in text), text
            [entry] = await w.spool.list()
            assert entry.envelope.mail_from == "jürgen@example.org" and entry.envelope.helo == "client.test"
            await clean(w)

    run_on(loop, main)


# 5. The size limit does not depend on TCP segmentation, and counts what RFC 1870 counts: the message
#    without the terminator and without transparency dots.

LIMIT = 2000


def stuff(message: bytes) -> bytes:
    """Dot transparency (RFC 5321 4.5.2): a line that starts with a dot gets one more."""
    return (b"\r\n" + message).replace(b"\r\n.", b"\r\n..")[2:]


def send_in_pieces(address: tuple[str, int], payload: bytes, tail: int) -> tuple[int, list[str]]:
    """DATA whose last `tail` bytes (part of the terminator) come in separate segments."""
    with wire(address) as c:
        transaction(c)
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.send(payload[:-tail])
        for i in range(len(payload) - tail, len(payload)):
            time.sleep(0.05)
            c.send(payload[i:i + 1])
        reply = c.reply()
        assert c.cmd("NOOP")[0] == 250
        return reply


def test_5_exact_size_accepted_however_it_arrives(tmp_path: Path, loop: str) -> None:
    async def main() -> None:
        async with watched(tmp_path, max_message_size=LIMIT) as w:
            exact = b"x" * (LIMIT - 2) + b"\r\n"
            dotted = (b"." + b"y" * 97 + b"\r\n") * 19  # every line starts with a dot: sent with two
            dotted += b"z" * (LIMIT - len(dotted) - 2) + b"\r\n"
            assert len(dotted) == LIMIT and len(stuff(dotted)) == LIMIT + 19
            for tail in (1, 2, 3, 5):
                code, _ = await asyncio.to_thread(send_in_pieces, w.address, exact + b".\r\n", tail)
                assert code == 250, tail
            assert (await asyncio.to_thread(send_in_pieces, w.address, stuff(dotted) + b".\r\n", 3))[0] == 250
            over = b"x" + exact
            for tail in (1, 3):
                code, text = await asyncio.to_thread(send_in_pieces, w.address, over + b".\r\n", tail)
                assert code == 552 and text[0].startswith("5.3.4"), tail
            sizes = sorted(e.size for e in await w.spool.list())
            assert sizes == [LIMIT] * 5
            await clean(w)

    run_on(loop, main)


# 6. LMTP answers every message-level refusal once per accepted recipient (RFC 2033 §4.2).

def test_6_lmtp_message_refusals_once_per_recipient(tmp_path: Path, loop: str) -> None:
    async def main() -> None:
        async with watched(tmp_path, kind="lmtp", max_message_size=1100, max_line_length=1000) as w:
            def session(payload: bytes) -> list[int]:
                with wire(w.address) as c:
                    transaction(c, hello="LHLO client.test",
                                rcpts=(f"one@{OURS}", f"two@{OURS}", f"three@{OURS}"))
                    c.send(payload)
                    codes = [c.reply()[0] for _ in range(3)]
                    assert c.cmd("NOOP")[0] == 250  # nothing more was pending: the session is in step
                    return codes

            assert await asyncio.to_thread(session, b"x" * 1200 + b"\r\n.\r\n") == [552, 552, 552]
            assert await asyncio.to_thread(session, b"y" * 999 + b"\r\n.\r\n") == [500, 500, 500]
            assert await w.spool.list() == []
            await clean(w)

    run_on(loop, main)


# 8. Trickling does not hold a session: a command line and a DATA phase each have a deadline; DATA's grows
#    only with the data actually received (min_data_rate).

def test_8_slowloris_in_data_and_in_a_command_is_cut_off(tmp_path: Path, loop: str) -> None:
    async def main() -> None:
        async with watched(tmp_path, idle_timeout=1.0, data_timeout=1.0, min_data_rate="1MiB") as w:
            def trickle(in_data: bool) -> tuple[bytes, float]:
                with wire(w.address, timeout=30) as c:
                    if in_data:
                        transaction(c)
                    else:
                        c.reply()
                    started = time.monotonic()
                    for _ in range(300):  # one byte every 0.1 s: the idle timer alone would never fire
                        c.send(b"x")
                        if select.select([c.sock], [], [], 0.1)[0]:
                            break
                    return c.sock.recv(1000), time.monotonic() - started

            for in_data in (True, False):
                said, took = await asyncio.to_thread(trickle, in_data)
                assert said.startswith(b"421 4.4.2 mx.test"), said
                assert took < 20  # far less than the 30 s the client was willing to trickle
            assert await w.spool.list() == []
            await clean(w)

    run_on(loop, main)


# 9. A client that half-closes after the final dot still gets its reply; nothing the client sent is echoed
#    raw into a reply.

def test_9_reply_after_half_close_and_nothing_echoed_raw(tmp_path: Path, loop: str) -> None:
    async def main() -> None:
        async with watched(tmp_path) as w:
            def half_close() -> bytes:
                with wire(w.address) as c:
                    transaction(c)
                    c.send(b"Subject: hc\r\n\r\nbye\r\n.\r\n")
                    c.sock.shutdown(socket.SHUT_WR)
                    out = b""
                    while chunk := c.sock.recv(1000):
                        out += chunk
                    return out

            said = await asyncio.to_thread(half_close)
            assert said.startswith(b"250 2.0.0 Ok: queued as "), said
            assert len(await w.spool.list()) == 1

            def garbage() -> bytes:
                with wire(w.address) as c:
                    c.reply()
                    c.send(b"EHLO c\r\nX\x00Y\rZ\r\nMAIL FROM:<a\x00\r@b>\r\nHELP \x00\r\r\nVRFY \x00\r\n")
                    c.send(b"NOOP\r\nQUIT\r\n")
                    out = b""
                    while chunk := c.sock.recv(1000):
                        out += chunk
                    return out

            said = await asyncio.to_thread(garbage)
            assert b"\x00" not in said and b"\r" not in said.replace(b"\r\n", b"") and b"\r\n221 " in said
            assert all(not line or line[:3].isdigit() for line in said.split(b"\r\n")), said
            await clean(w)

    run_on(loop, main)


# (b of issue 17) A thousand refused RCPTs are one log line and a count at the session's end.

def test_refused_commands_are_logged_once_per_class_per_session(tmp_path: Path, loop: str) -> None:
    async def main() -> None:
        # max_errors (test_intake_limits.py) would end this session long before: the logging is tested here.
        async with watched(tmp_path, max_errors=1000) as w:
            def session() -> None:
                with wire(w.address) as c:
                    c.reply()
                    c.cmd("EHLO client.test")
                    c.cmd("MAIL FROM:<a@example.org>")
                    c.send(b"".join(f"RCPT TO:<u{i}@elsewhere.test>\r\n".encode() for i in range(300)))
                    for _ in range(300):
                        assert c.reply()[0] == 550
                    c.send(b"".join(f"RCPT TO:<unknown{i}@{OURS}>\r\n".encode() for i in range(50)))
                    for _ in range(50):
                        assert c.reply()[0] == 550
                    for _ in range(4):
                        c.cmd("BOGUS")
                    c.cmd("QUIT")

            await asyncio.to_thread(session)
            await clean(w)
            refused = w.named("intake.refused")
            assert len(refused) == 2, refused  # RCPT 550 (relaying and unknown user: one class) and BOGUS
            [end] = w.named("intake.session_end")
            assert end["refused"]["RCPT 550"] == 350 and sum(end["refused"].values()) == 354

    run_on(loop, main)

"""Limits that keep one client from locking the door for the others, against a real listener:
`max_sessions_per_client` (one address cannot take every slot) and `max_errors` (a session that collects
refusals — a dictionary attack, a confused client — is told 421 and hung up). Clients play different hosts
from 127.0.0.x source addresses."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.integration.hostile import LOOPS, OURS, Watch, run_on, watched
from tests.integration.smtpwire import SmtpWire
from tests.waiting import wait_until

pytestmark = pytest.mark.parametrize("loop", LOOPS)


async def clean(w: Watch) -> None:
    await wait_until(lambda: not w.listener.sessions, "every session slot released")
    assert w.problems() == []


def test_one_client_cannot_take_every_slot(tmp_path: Path, loop: str) -> None:
    async def main() -> None:
        async with watched(tmp_path, max_sessions=10, max_sessions_per_client=3) as w:
            def crowd() -> None:
                held = [SmtpWire.connect(w.address, source="127.0.0.2") for _ in range(3)]
                try:
                    for c in held:
                        assert c.reply()[0] == 220
                    for _ in range(3):  # the fourth and later from that host are turned away ...
                        extra = SmtpWire.connect(w.address, source="127.0.0.2")
                        code, text = extra.reply()
                        assert code == 421 and text[0].startswith("4.7.0 mx.test"), (code, text)
                        assert extra.sock.recv(100) == b""  # ... and hung up on
                        extra.close()
                    other = SmtpWire.connect(w.address, source="127.0.0.3")  # another host is served
                    assert other.reply()[0] == 220
                    other.close()
                    held.pop().close()
                finally:
                    for c in held:
                        c.close()

            await asyncio.to_thread(crowd)
            # Once one of its sessions ended, the host is served again.
            await wait_until(lambda: not w.listener._per_client.get("127.0.0.2"), "the host's sessions ended")

            def again() -> int:
                c = SmtpWire.connect(w.address, source="127.0.0.2")
                try:
                    return c.reply()[0]
                finally:
                    c.close()

            assert await asyncio.to_thread(again) == 220
            await clean(w)
            assert len(w.named("intake.client_limit")) == 1  # one line while the host stayed over, not three

    run_on(loop, main)


def test_trusted_relays_are_not_limited_per_client(tmp_path: Path, loop: str) -> None:
    """Postfix in front: every client arrives from its address."""
    async def main() -> None:
        async with watched(tmp_path, max_sessions=10, max_sessions_per_client=2, trusted_relays=["127.0.0.4"]) as w:
            def relay() -> list[int]:
                conns = [SmtpWire.connect(w.address, source="127.0.0.4") for _ in range(5)]
                try:
                    return [c.reply()[0] for c in conns]
                finally:
                    for c in conns:
                        c.close()

            assert await asyncio.to_thread(relay) == [220] * 5
            await clean(w)

    run_on(loop, main)


def test_a_session_that_collects_refusals_is_hung_up(tmp_path: Path, loop: str) -> None:
    async def main() -> None:
        async with watched(tmp_path, max_errors=5) as w:
            def attack() -> list[int]:
                c = SmtpWire.connect(w.address, source="127.0.0.5")
                try:
                    assert c.reply()[0] == 220
                    assert c.cmd("EHLO attacker.test")[0] == 250
                    assert c.cmd("MAIL FROM:<x@example.org>")[0] == 250
                    codes = [c.cmd(f"RCPT TO:<unknown{i}@{OURS}>")[0] for i in range(5)]
                    code, text = c.reply()  # after the fifth refusal, without another command
                    codes.append(code)
                    assert text[0].startswith("4.7.0 mx.test") and c.sock.recv(100) == b""
                    return codes
                finally:
                    c.close()

            assert await asyncio.to_thread(attack) == [550] * 5 + [421]
            await clean(w)

    run_on(loop, main)


def test_too_many_recipients_do_not_count_as_errors(tmp_path: Path, loop: str) -> None:
    """A client that sends more RCPTs than max_recipients gets 452 for the overshoot and delivers the rest
    (RFC 5321 §4.5.3.1.10); hanging up there would make it retry the whole message for ever."""
    async def main() -> None:
        async with watched(tmp_path, max_errors=3, max_recipients=2) as w:
            def mailing() -> tuple[list[int], int]:
                c = SmtpWire.connect(w.address)
                try:
                    assert c.reply()[0] == 220
                    assert c.cmd("EHLO list.test")[0] == 250
                    assert c.cmd("MAIL FROM:<x@example.org>")[0] == 250
                    codes = [c.cmd(f"RCPT TO:<r{i}@{OURS}>")[0] for i in range(8)]
                    assert c.cmd("DATA")[0] == 354
                    c.send(b"Subject: hi\r\n\r\nhello\r\n.\r\n")
                    return codes, c.reply()[0]
                finally:
                    c.close()

            codes, final = await asyncio.to_thread(mailing)
            assert codes == [250, 250] + [452] * 6 and final == 250
            await clean(w)

    run_on(loop, main)

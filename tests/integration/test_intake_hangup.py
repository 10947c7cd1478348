"""When the server ends a session on its own (a deadline, too many unknown commands, shutdown), its last reply
reaches the client and the connection ends with FIN, not a reset.

Closing a socket while the client's input is still unread makes the kernel answer RST, and drop what is still
in our send queue: a client that pipelined past the point where we hung up, or read late, lost our last
replies and the 421 (RFC 793 also lets a receiving stack flush what it had not yet handed over). The session
now half-closes after its reply and reads and discards until the client's EOF, for a bounded time
(smtp_session._hang_up). Every test runs on uvloop and asyncio's loop.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.integration.hostile import LOOPS, Watch, run_on, watched
from tests.integration.smtpwire import wire
from tests.integration.test_intake_hostile import clean, transaction
from tests.waiting import wait_until, wait_until_sync

pytestmark = pytest.mark.parametrize("loop", LOOPS)

TOO_MANY = b"421 4.7.0 mx.test Error: too many unrecognized commands\r\n"


def send_in_background(sock: socket.socket, data: bytes) -> threading.Thread:
    """sendall from a thread: the server stops reading at some point, and we must read meanwhile."""
    def send() -> None:
        try:
            sock.sendall(data)
        except OSError:
            pass  # the server hung up before reading it all: what we check is what we read
    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def read_to_end(sock: socket.socket) -> tuple[bytes, str | None]:
    """Everything the server says until its FIN, and the error instead of FIN if it reset the connection."""
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except OSError as exc:
            return out, repr(exc)
        if not chunk:
            return out, None
        out += chunk


async def session_ended(w: Watch, reason: str) -> None:
    await wait_until(lambda: any(e.get("reason") == reason for e in w.named("intake.session_end")),
                     f"a session ended by {reason}")


def test_hang_up_with_input_pending_is_fin_not_reset(tmp_path: Path, loop: str) -> None:
    """A pipeline of unknown commands far past the five that end the session: the rest is never read as
    commands. Before: the 421, then ECONNRESET every time (the unread rest made the close a reset)."""
    async def main() -> None:
        async with watched(tmp_path) as w:
            def pipelined() -> tuple[bytes, str | None]:
                with wire(w.address) as c:
                    sender = send_in_background(c.sock, b"XYZZY\r\n" * 30_000)  # 210 KB
                    said = read_to_end(c.sock)
                    sender.join(10)
                    return said

            said, error = await asyncio.to_thread(pipelined)
            assert said.startswith(b"220 ") and said.endswith(TOO_MANY) and error is None, (said[-200:], error)
            assert said.count(b"\r\n500 ") == 4
            await clean(w)

    run_on(loop, main)


def test_a_client_that_reads_late_gets_every_reply_and_the_421(tmp_path: Path, loop: str) -> None:
    """A client pipelines 20,000 NOOPs, five unknown commands and more, and reads only once the server has hung
    up: its replies wait in our send queue. Before: the close reset the connection and dropped that queue
    (some thousands of the 20,000 replies arrived, and no 421)."""
    async def main() -> None:
        async with watched(tmp_path, idle_timeout=30) as w:
            ready = threading.Event()

            def late_reader() -> tuple[bytes, str | None]:
                with wire(w.address) as c:
                    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)  # replies back up at our end
                    sender = send_in_background(c.sock, b"NOOP\r\n" * 20_000 + b"XYZZY\r\n" * 5
                                                + b"NOOP\r\n" * 20_000)
                    assert ready.wait(30), "the server did not end the session"
                    said = read_to_end(c.sock)
                    sender.join(10)
                    return said

            reader = asyncio.create_task(asyncio.to_thread(late_reader))
            await session_ended(w, "unknown_commands")
            ready.set()
            said, error = await reader
            assert error is None and said.endswith(TOO_MANY), (said[-200:], error)
            assert said.count(b"\r\n250 ") == 20_000 and said.count(b"\r\n500 ") == 4
            await clean(w)

    run_on(loop, main)


def test_deadline_in_data_while_the_client_keeps_sending(tmp_path: Path, loop: str) -> None:
    """The fuzzer's slowloris in DATA: the client still sends when the deadline passes. It reads 421 4.4.2, then
    our FIN; we keep reading until it closes."""
    async def main() -> None:
        async with watched(tmp_path, idle_timeout=1.0, data_timeout=0.5, min_data_rate="1MiB") as w:
            def sender_in_data() -> tuple[bytes, str | None]:
                with wire(w.address) as c:
                    transaction(c)
                    stop = threading.Event()

                    def trickle() -> None:
                        while not stop.is_set():
                            try:
                                c.sock.sendall(b"x" * 512)
                            except OSError:
                                return
                            time.sleep(0.01)
                    thread = threading.Thread(target=trickle, daemon=True)
                    thread.start()
                    said = read_to_end(c.sock)
                    stop.set()
                    thread.join(10)
                    return said

            said, error = await asyncio.to_thread(sender_in_data)
            assert said == b"421 4.4.2 mx.test Error: timeout exceeded\r\n" and error is None, (said, error)
            assert await w.spool.list() == []
            await clean(w)

    run_on(loop, main)


def test_a_client_that_never_closes_frees_its_slot_after_the_linger(tmp_path: Path, loop: str) -> None:
    """The slot is held while we wait for the client's EOF (so max_sessions bounds sockets, too), but not for
    ever: the socket of a client that never closes its side is closed after the linger, and the slot comes
    back."""
    async def main() -> None:
        async with watched(tmp_path, max_sessions=1) as w:
            def greeted() -> bool:
                with wire(w.address) as fresh:
                    return fresh.sock.recv(100).startswith(b"220 mx.test")

            def stays() -> tuple[bytes, str | None]:
                with wire(w.address) as c:
                    c.send(b"XYZZY\r\n" * 5)
                    said = read_to_end(c.sock)  # the 421 and our FIN: we never close our side here
                    # Meanwhile fresh clients hear 421 4.3.2; one is greeted once the linger closed our socket.
                    wait_until_sync(greeted, "a fresh client greeted while the first one never closes")
                    return said

            said, error = await asyncio.to_thread(stays)
            assert said.endswith(TOO_MANY) and error is None, (said, error)
            await clean(w)

    run_on(loop, main)

"""A seeded grammar fuzzer for SMTP and LMTP listeners, over real sockets (blocking, one thread per client).

Every session is a script drawn from the seed: valid transactions (pipelined or not, bodies cut at random
TCP boundaries, exactly at the size limit or past it, with smuggling sequences, NUL, bare CR/LF and 8-bit
bytes), random command sequences from a hostile grammar, abrupt closes, half-closes after the final dot,
stalls, slowloris and connection floods. What each session saw is recorded, so the test can check the spool
against what was acknowledged, and the timing of the sessions the server had to end against their deadlines.
The same seed replays the same sessions (the machine's timing aside).

A flood fills the listener up to max_sessions, so a session another thread opens meanwhile may be greeted with
421 4.3.2 instead of 220: that is the server's right answer, so it is counted (the test checks the count
against the daemon's own) and the script ends there; it is neither a violation nor a session the server ended
by a deadline (it never started one).
"""

from __future__ import annotations

import random
import socket
import time
from dataclasses import dataclass, field
from typing import Literal

ALIASES = ("sales", "help", "inbox", "a", "b")
DOMAIN = "example.com"
SMUGGLE = (b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\r\n\x00.\r\n", b"\n..\n")
HOSTILE_ARGS = ("", "<", "<@", "<a@", "a@", "<@x.test:>", "<>", "<a@b@c>", "<\"unterminated@x>", "<a@[1.2.3.4]>",
                "<a b@example.com>", "<a@example.com", "<<a@example.com>>", "<a@example..com>", "<.a@example.com>",
                "<postmaster>", "<\"quoted local\"@example.com>", "<@relay.test:sales@example.com>")
HOSTILE_BYTES = (b"\x00", b"\r", b"\xff\xfe", "ü".encode(), b"\t", b"\x1b[31m", b"%s%n", b"A" * 3000)
BUSY = b"421 4.3.2 "  # the listener is at max_sessions
COMMANDS = ("HELO", "EHLO", "LHLO", "MAIL FROM:", "RCPT TO:", "DATA", "RSET", "NOOP", "VRFY", "EXPN", "HELP",
            "STARTTLS", "AUTH PLAIN", "AUTH LOGIN", "QUIT", "BDAT 10", "XFORWARD NAME=x", "GET / HTTP/1.1")

Status = Literal["acked", "refused", "unknown"]


@dataclass
class Limits:
    idle_timeout: float
    data_timeout: float
    min_data_rate: int
    max_message_size: int
    max_line_length: int


@dataclass
class Message:
    message_id: str
    content: bytes  # as it must be stored
    status: Status
    rcpts: tuple[str, ...]
    reply: str = ""


@dataclass
class Ended:
    """A session the server had to end: how long it took after the client stopped, and the bound."""

    script: str
    waited: float
    bound: float
    said: bytes


@dataclass
class Record:
    messages: list[Message] = field(default_factory=list)
    ended: list[Ended] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    sessions: int = 0
    turned_away: list[bytes] = field(default_factory=list)  # 421 4.3.2 greetings: the listener was full


class Wire:
    """A client socket that reads replies and remembers when it last heard something."""

    def __init__(self, address: tuple[str, int], timeout: float):
        self.sock = socket.create_connection(address, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.heard = time.monotonic()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> tuple[int, list[bytes]] | None:
        """One reply (code, lines), or None when the server closed (or did not answer in time)."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                try:
                    chunk = self.sock.recv(65536)
                except OSError:
                    return None
                if not chunk:
                    return None
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line)
            self.heard = time.monotonic()
            if line[3:4] != b"-":
                return (int(line[:3]) if line[:3].isdigit() else -1), lines

    def exchange(self, lines: list[bytes], pipelined: bool) -> list[tuple[int, list[bytes]] | None]:
        """Send command lines and read one reply each: all in one write (PIPELINING) or one at a time."""
        if pipelined:
            self.send(b"".join(line + b"\r\n" for line in lines))
            return [self.reply() for _ in lines]
        replies: list[tuple[int, list[bytes]] | None] = []
        for line in lines:
            self.send(line + b"\r\n")
            replies.append(self.reply())
            if replies[-1] is None:
                break
        return replies

    def wait_closed(self) -> bytes:
        """Everything the server still says until it closes."""
        out = self.buf
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return out
            if not chunk:
                return out
            out += chunk

    def close(self) -> None:
        self.sock.close()


def stuff(content: bytes) -> bytes:
    return (b"\r\n" + content).replace(b"\r\n.", b"\r\n..")[2:]


def body(rng: random.Random, limits: Limits, message_id: str) -> bytes:
    head = f"Message-Id: {message_id}\r\nSubject: fuzz\r\nFrom: f@example.org\r\n\r\n".encode()
    parts = [head]
    for _ in range(rng.randrange(0, 12)):
        pick = rng.random()
        if pick < 0.3:
            parts.append(bytes(rng.randrange(32, 127) for _ in range(rng.randrange(0, 120))) + b"\r\n")
        elif pick < 0.45:
            parts.append(b"." * rng.randrange(1, 4) + b"dot line\r\n")
        elif pick < 0.6:
            parts.append(rng.choice(SMUGGLE) + b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<sales@example.com>\r\n"
                         b"DATA\r\nSubject: smuggled\r\n\r\n")
        elif pick < 0.8:
            parts.append(rng.choice(HOSTILE_BYTES) + b"\r\n")
        else:
            parts.append(rng.randbytes(rng.randrange(0, 300)) + b"\r\n")
    content = b"".join(parts)
    shape = rng.random()
    limit = limits.max_message_size
    if shape < 0.15:  # exactly at the size limit
        content += b"x" * max(0, limit - len(content) - 2) + b"\r\n"
    elif shape < 0.25:  # just past it
        content += b"y" * max(0, limit - len(content) + rng.randrange(1, 4)) + b"\r\n"
    elif shape < 0.32:  # one line too long
        content += b"z" * (limits.max_line_length + rng.randrange(0, 3)) + b"\r\n"
    if not content.endswith(b"\r\n"):
        content += b"\r\n"
    return content


def expected_reply(content: bytes, limits: Limits) -> int:
    if len(content) > limits.max_message_size:
        return 552
    longest = max(len(seg) for seg in content.split(b"\n")) + 1
    if len(content) > limits.max_line_length and longest > limits.max_line_length:
        return 500
    return 250


def send_cut(wire: Wire, rng: random.Random, data: bytes) -> None:
    """Send in random pieces, sometimes a byte at a time near the end (where the terminator is)."""
    pos = 0
    while pos < len(data):
        near_end = len(data) - pos <= 6 and rng.random() < 0.5
        size = 1 if near_end else rng.randrange(1, max(2, min(len(data) - pos, 70000)) + 1)
        wire.send(data[pos:pos + size])
        pos += size
        if rng.random() < 0.1:
            time.sleep(rng.random() * 0.01)


class Fuzzer:
    def __init__(self, address: tuple[str, int], lmtp: bool, limits: Limits, record: Record, tag: str):
        self.address = address
        self.lmtp = lmtp
        self.limits = limits
        self.record = record
        self.tag = tag
        self.count = 0

    def session(self, rng: random.Random, script: str | None = None) -> None:
        """One session: `script` if given, else one drawn from `rng`."""
        self.record.sessions += 1
        script = script or rng.choices(["transaction", "garbage", "abrupt", "half_close", "stall", "slowloris",
                                        "flood"], weights=[40, 20, 10, 8, 5, 4, 3])[0]
        try:
            getattr(self, script)(rng)
        except (ConnectionError, TimeoutError, BrokenPipeError):
            pass  # the server hung up on a hostile client: what it acknowledged is checked afterwards

    # -- scripts -----------------------------------------------------------------------------------------

    def _greeted(self, wire: Wire) -> bool:
        """Read the greeting: True for 220. A full listener's 421 4.3.2 (another thread's flood) is recorded as
        turned away, once the server closed after it; anything else is a violation."""
        greeting = wire.reply()
        if greeting is not None and greeting[0] == 220:
            return True
        if greeting is not None and greeting[1][0].startswith(BUSY):
            rest = wire.wait_closed()
            self.record.turned_away.append(greeting[1][0])
            if rest:
                self.record.violations.append(f"said more after {greeting[1][0]!r}: {rest[:100]!r}")
            return False
        self.record.violations.append(f"greeting {greeting}")
        return False

    def _hello(self, wire: Wire) -> bool:
        if not self._greeted(wire):
            return False
        wire.send((b"LHLO" if self.lmtp else b"EHLO") + b" client.fuzz.test\r\n")
        hello = wire.reply()
        return hello is not None and hello[0] == 250

    def _into_data(self, wire: Wire) -> bool:
        """Greeting, hello and a valid envelope, up to the 354."""
        if not self._hello(wire):
            return False
        replies = wire.exchange([b"MAIL FROM:<s@example.org>", f"RCPT TO:<sales@{DOMAIN}>".encode(), b"DATA"], True)
        return replies[-1] is not None and replies[-1][0] == 354

    def _new_id(self) -> str:
        self.count += 1
        return f"<fz-{self.tag}-{self.count}@fuzz.test>"

    def transaction(self, rng: random.Random, *, half_close: bool = False, abrupt: bool = False) -> None:
        wire = Wire(self.address, 15)
        try:
            if not self._hello(wire):
                return
            for _ in range(rng.choice([1, 1, 2, 3])):
                if not self._one_message(wire, rng, half_close=half_close, abrupt=abrupt):
                    return
            wire.send(b"QUIT\r\n")
            wire.reply()
        finally:
            wire.close()

    def _one_message(self, wire: Wire, rng: random.Random, *, half_close: bool, abrupt: bool) -> bool:
        utf8 = rng.random() < 0.15
        sender = "jürgen@exämple.org" if utf8 else rng.choice(["s@example.org", "", "x.y+z@sub.example.org"])
        rcpts = [f"{rng.choice(ALIASES)}@{DOMAIN}" for _ in range(rng.randrange(1, 4))]
        rcpts += rng.sample([f"unknown@{DOMAIN}", "x@elsewhere.test", "<bad"], rng.randrange(0, 2))
        commands = [f"MAIL FROM:<{sender}>{' SMTPUTF8' if utf8 else ''}".encode()]
        commands += [f"RCPT TO:{r if r.startswith('<') else f'<{r}>'}".encode() for r in rcpts]
        commands.append(b"DATA")
        replies = wire.exchange(commands, pipelined=rng.random() < 0.5)
        if len(replies) < len(commands) or any(r is None for r in replies):
            return False
        accepted = tuple(r.strip("<>") for r, rep in zip(rcpts, replies[1:-1], strict=True)
                         if rep is not None and rep[0] == 250)
        data_reply = replies[-1]
        assert data_reply is not None
        if data_reply[0] != 354:
            if accepted and replies[0] is not None and replies[0][0] == 250:
                self.record.violations.append(f"DATA refused with accepted recipients: {data_reply}")
            wire.send(b"RSET\r\n")
            return wire.reply() is not None
        mid = self._new_id()
        content = body(rng, self.limits, mid)
        payload = stuff(content) + b".\r\n"
        if abrupt:
            cut = rng.randrange(0, len(payload) + 1)
            send_cut(wire, rng, payload[:cut])
            self.record.messages.append(Message(mid, content, "unknown", accepted))
            wire.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            return False  # closed by the caller: a reset, at any point of the DATA
        send_cut(wire, rng, payload)
        if half_close:
            wire.sock.shutdown(socket.SHUT_WR)
        answers = [wire.reply() for _ in (accepted if self.lmtp else [0])]
        expected = expected_reply(content, self.limits)
        if any(a is None for a in answers):
            self.record.violations.append(f"{mid}: no reply after the final dot (half_close={half_close})")
            self.record.messages.append(Message(mid, content, "unknown", accepted))
            return False
        codes = {a[0] for a in answers if a is not None}
        text = b" / ".join(a[1][0] for a in answers if a is not None).decode("utf-8", "replace")
        status: Status = "acked" if codes == {250} else "refused"
        if codes != {expected}:
            self.record.violations.append(f"{mid}: expected {expected}, got {text}")
        self.record.messages.append(Message(mid, content, status, accepted, text))
        return not half_close

    def half_close(self, rng: random.Random) -> None:
        self.transaction(rng, half_close=True)

    def abrupt(self, rng: random.Random) -> None:
        if rng.random() < 0.5:
            self.transaction(rng, abrupt=True)
            return
        wire = Wire(self.address, 15)  # mid-command
        wire.send(rng.choice([b"EH", b"MAIL FROM:<a@", b"\x00\xff", b""]))
        wire.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        wire.close()

    def garbage(self, rng: random.Random) -> None:
        wire = Wire(self.address, 15)
        try:
            if rng.random() < 0.7 and not self._hello(wire):
                return
            lines = []
            for _ in range(rng.randrange(1, 12)):
                command = rng.choice(COMMANDS).encode()
                arg = rng.choice(HOSTILE_ARGS).encode() if rng.random() < 0.6 else rng.choice(HOSTILE_BYTES)
                lines.append(command + (b"" if command.endswith(b":") else b" ") + arg)
            for r in wire.exchange(lines, pipelined=rng.random() < 0.5):
                if r is None:
                    break
                for line in r[1]:
                    if not line[:3].isdigit() or not all(32 <= b < 127 or b >= 128 for b in line):
                        self.record.violations.append(f"malformed reply line {line!r}")
                if r[0] == 354:  # a random sequence reached DATA: leave without sending content
                    return
                if 400 <= r[0] < 500 and r[0] not in (421, 452):
                    self.record.violations.append(f"4xx for a client error: {r}")
        finally:
            wire.close()

    def stall(self, rng: random.Random) -> None:
        wire = Wire(self.address, 30)
        try:
            if rng.random() < 0.5:
                if not self._into_data(wire):
                    return
                wire.send(b"Subject: stalled\r\n\r\nhalf a mess")
            else:
                if not self._greeted(wire):
                    return
                wire.send(rng.choice([b"", b"EHLO half"]))
            stopped = time.monotonic()
            said = wire.wait_closed()
            self.record.ended.append(Ended("stall", time.monotonic() - stopped, self.limits.idle_timeout, said))
        finally:
            wire.close()

    def slowloris(self, rng: random.Random) -> None:
        wire = Wire(self.address, 30)
        try:
            bound = self.limits.idle_timeout
            if rng.random() < 0.5:
                if not self._into_data(wire):
                    return
                bound = self.limits.data_timeout + 1.0  # a few hundred octets at min_data_rate add little
            elif not self._greeted(wire):
                return
            started = time.monotonic()
            sent = 0
            while time.monotonic() - started < bound + 10:
                try:
                    wire.send(b"x")
                except OSError:
                    break
                sent += 1
                wire.sock.settimeout(0.15)
                try:
                    if wire.sock.recv(1, socket.MSG_PEEK):
                        break
                except TimeoutError:
                    continue
                except OSError:
                    break
            wire.sock.settimeout(10)
            said = wire.wait_closed()
            waited = time.monotonic() - started
            self.record.ended.append(Ended("slowloris", waited, bound + sent / self.limits.min_data_rate, said))
        finally:
            wire.close()

    def flood(self, rng: random.Random) -> None:
        socks = []
        for _ in range(rng.randrange(20, 80)):
            try:
                socks.append(socket.create_connection(self.address, timeout=5))
            except OSError:
                break
        for s in socks:
            if rng.random() < 0.5:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()
        said = greeting_within(self.address, 1.0)
        if not said.startswith(b"220 "):
            self.record.violations.append(f"no 220 within a second after a flood of {len(socks)}: {said!r}")


def greeting_within(address: tuple[str, int], seconds: float) -> bytes:
    """A fresh client's first line, retried while the listener is still full (421), for at most `seconds`: a
    liveness check with a generous bound, not a timing measurement."""
    deadline = time.monotonic() + seconds
    said = b""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(address, timeout=seconds) as s:
                said = s.recv(200)
        except OSError as exc:
            said = repr(exc).encode()
        if said.startswith(b"220 "):
            return said
        time.sleep(0.02)
    return said

"""A tiny raw SMTP/LMTP client for tests that must see every reply line exactly as sent (blocking sockets)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


class SmtpWire:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    @classmethod
    def connect(cls, address: str | tuple[str, int], timeout: float = 10.0, source: str | None = None) -> SmtpWire:
        """`source`: the loopback address to connect from (127.0.0.x plays another client)."""
        if isinstance(address, str):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            s.connect(address)
        else:
            s = socket.create_connection(address, timeout=timeout,
                                         source_address=(source, 0) if source else None)
        return cls(s)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; pending {self.buf!r}")
            self.buf += chunk
        out, self.buf = self.buf.split(b"\r\n", 1)
        return out

    def reply(self) -> tuple[int, list[str]]:
        """One (possibly multi-line) reply: (code, text lines)."""
        lines = []
        while True:
            raw = self.line().decode("utf-8", "replace")
            lines.append(raw[4:])
            if raw[3:4] != "-":
                return int(raw[:3]), lines

    def cmd(self, text: str) -> tuple[int, list[str]]:
        self.send(text.encode() + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()


@contextmanager
def wire(address: str | tuple[str, int], timeout: float = 10.0) -> Iterator[SmtpWire]:
    w = SmtpWire.connect(address, timeout)
    try:
        yield w
    finally:
        w.close()

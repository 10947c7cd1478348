"""A receiving MTA on loopback for outbound tests (aiosmtpd): counts connections and RSETs, records every
transaction, answers by local part, and can throttle like Gmail does.

    async with fake_mx("127.0.0.2", throttle=(50, 1.0)) as mx:   # 421 4.7.28 past 50 messages/s per source
        ... mx.port, mx.connections, mx.messages, mx.throttled

Local parts decide RCPT answers: ``bad*`` 550 5.1.1, ``policy*`` 550 5.7.1, ``busy*`` 451 4.2.1; the rest 250.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP


@dataclass
class Received:
    mail_from: str
    rcpts: list[str]
    data: bytes
    mail_options: list[str]
    peer: str


@dataclass
class FakeMx:
    throttle: tuple[int, float] | None = None  # (messages, window seconds) per connection source
    port: int = 0
    connections: int = 0
    rsets: int = 0
    throttled: int = 0
    messages: list[Received] = field(default_factory=list)
    _windows: dict[str, tuple[float, int]] = field(default_factory=dict)

    @property
    def transactions(self) -> list[tuple[str, list[str], bytes]]:
        """(MAIL FROM, recipients, data) of every message received."""
        return [(m.mail_from, m.rcpts, m.data) for m in self.messages]

    async def handle_MAIL(self, server: SMTP, session: Any, envelope: Any, address: str,
                          mail_options: list[str]) -> str:
        if self.throttle is not None:
            limit, window = self.throttle
            source = session.peer[0]
            start, count = self._windows.get(source, (time.monotonic(), 0))
            if time.monotonic() - start >= window:
                start, count = time.monotonic(), 0
            if count >= limit:
                self.throttled += 1
                asyncio.get_running_loop().call_soon(server.transport.close)  # 421: the server hangs up
                return ("421 4.7.28 [127.0.0.1] Our system has detected an unusual rate of unsolicited mail "
                        "originating from your IP address. To protect our users from spam, mail sent from your "
                        "IP address has been temporarily rate limited.")
            self._windows[source] = (start, count + 1)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        local = address.split("@")[0].lower()
        if local.startswith("bad"):
            return "550 5.1.1 The email account that you tried to reach does not exist"
        if local.startswith("policy"):
            return "550 5.7.1 Message rejected: unauthenticated email from example.com is not accepted (DMARC)"
        if local.startswith("busy"):
            return "451 4.2.1 Mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_RSET(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.rsets += 1
        return "250 2.0.0 OK"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content,
                                      list(envelope.mail_options), session.peer[0]))
        return "250 2.0.0 OK queued"


@asynccontextmanager
async def fake_mx(host: str = "127.0.0.1", *, throttle: tuple[int, float] | None = None, smtputf8: bool = False,
                  tls: ssl.SSLContext | None = None, implicit_tls: bool = False,
                  hostname: str = "mx.remote.test", port: int = 0) -> AsyncIterator[FakeMx]:
    """`tls`: STARTTLS with this server context (or, with `implicit_tls`, TLS from the first byte). MX hosts
    share one port (outbound.smtp_port): give the first one's port to the others, on other 127.0.0.x."""
    mx = FakeMx(throttle=throttle)

    def factory() -> SMTP:
        mx.connections += 1
        return SMTP(mx, hostname=hostname, enable_SMTPUTF8=smtputf8, decode_data=False,
                    tls_context=None if implicit_tls else tls)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, host, port, ssl=tls if implicit_tls else None)
    mx.port = server.sockets[0].getsockname()[1]
    try:
        yield mx
    finally:
        server.close()
        await server.wait_closed()

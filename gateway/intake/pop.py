"""POP3 intake: `Pop3Poller` drains one maildrop into the spool; `Pop3Client` is a small RFC 1939 client.

Why our own client on asyncio streams rather than poplib in a thread: a poller lives for months and must be
stoppable and bounded at every step. poplib blocks a thread per mailbox, cannot be cancelled mid-RETR, and
would need its own timeout/abort plumbing; RFC 1939 (+ RFC 2595 STLS, RFC 2449 CAPA) is a dozen commands, and
streams give cancellation, timeouts and `start_tls` for free.

Per session: CAPA, STLS (tls: starttls), USER/PASS, UIDL, LIST, then per message RETR -> spool commit (ledger key
``pop3:<name>:<uidl>``) -> DELE, and QUIT, which is when the server really deletes (RFC 1939 UPDATE state). A
crash or a dropped connection before QUIT deletes nothing; the next session finds the UIDLs in the ledger and
only deletes. A session handles at most `session_limit` messages before QUIT so that such a replay stays small.
A server without UIDL gets a content-hash key instead (still no duplicates, but every message is downloaded
before it is recognised).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from typing import Any

from gateway.config import Config, ConfigError, Pop3Config
from gateway.errors import GatewayError
from gateway.intake.mailbox import (
    BackoffPolicy,
    FetchedMessage,
    MailboxPoller,
    crash_point,
    default_port,
    is_loopback,
    pop3_key,
    ssl_context_for,
)
from gateway.logs import get_logger
from gateway.spool.base import Spool

log = get_logger("mailgw.intake.pop3")


class Pop3Error(GatewayError):
    """-ERR or an unexpected answer; the poller reconnects."""


class Pop3ConnectionLost(Pop3Error):
    pass


class Pop3AuthError(Pop3Error):
    pass


class Pop3Client:
    """A minimal async POP3 client: implicit TLS or STLS with verification, CAPA, USER/PASS, UIDL, LIST, RETR,
    TOP, DELE, QUIT. Every read is bounded by `timeout`."""

    def __init__(self, host: str, port: int, *, ssl_context: ssl.SSLContext | None, timeout: float,
                 max_message_size: int) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.timeout = timeout
        # StreamReader refuses a "line" longer than its limit; a RETR body is read as one such run.
        self.limit = max_message_size * 2 + (1 << 20)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.greeting = ""
        self.capabilities: set[str] = set()

    async def connect(self) -> str:
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, ssl=self.ssl_context, limit=self.limit,
                                    server_hostname=self.host if self.ssl_context else None),
            self.timeout)
        self.greeting = await self._status("greeting")
        return self.greeting

    async def _readline(self, what: str) -> bytes:
        assert self.reader is not None
        try:
            line = await asyncio.wait_for(self.reader.readline(), self.timeout)
        except TimeoutError:
            raise Pop3ConnectionLost(f"no answer to {what} within {self.timeout:g}s") from None
        if not line:
            raise Pop3ConnectionLost(f"connection closed during {what}")
        return line

    async def _status(self, what: str) -> str:
        line = await self._readline(what)
        text = line.decode("utf-8", errors="replace").rstrip("\r\n")
        if text.startswith("+OK"):
            return text[3:].strip()
        raise Pop3Error(f"{what}: {text}")

    async def _send(self, line: str) -> None:
        assert self.writer is not None
        self.writer.write(line.encode() + b"\r\n")
        await asyncio.wait_for(self.writer.drain(), self.timeout)

    async def command(self, line: str, what: str | None = None) -> str:
        await self._send(line)
        return await self._status(what or line.split(" ", 1)[0])

    async def multiline(self, what: str) -> bytes:
        """The data after a +OK, up to the terminating "." line, dot-unstuffed."""
        assert self.reader is not None
        buf = bytearray()
        while not (buf == b".\r\n" or buf.endswith(b"\n.\r\n")):
            try:
                buf += await asyncio.wait_for(self.reader.readuntil(b".\r\n"), self.timeout)
            except TimeoutError:
                raise Pop3ConnectionLost(f"no data for {what} within {self.timeout:g}s") from None
            except asyncio.IncompleteReadError:
                raise Pop3ConnectionLost(f"connection closed during {what}") from None
            except asyncio.LimitOverrunError:
                raise Pop3Error(f"{what}: response larger than {self.limit} bytes") from None
        body = bytes(buf[:-3])
        if body.startswith(b".."):
            body = body[1:]
        return body.replace(b"\r\n..", b"\r\n.")

    async def capa(self) -> set[str]:
        try:
            await self.command("CAPA")
        except Pop3Error:
            return set()  # RFC 1939-only server
        self.capabilities = {ln.strip().upper() for ln in (await self.multiline("CAPA")).decode(
            errors="replace").splitlines() if ln.strip()}
        return self.capabilities

    async def stls(self, ctx: ssl.SSLContext) -> None:
        assert self.writer is not None
        await self.command("STLS")
        await asyncio.wait_for(self.writer.start_tls(ctx, server_hostname=self.host), self.timeout)
        await self.capa()  # RFC 2595: capabilities may differ after TLS

    async def login(self, user: str, password: str) -> None:
        try:
            await self.command(f"USER {user}")
            await self._send(f"PASS {password}")
            await self._status("PASS")  # never echo the password in an error
        except Pop3ConnectionLost:
            raise
        except Pop3Error as exc:
            raise Pop3AuthError(f"login refused: {exc}") from None

    async def stat(self) -> tuple[int, int]:
        count, size = (await self.command("STAT")).split()[:2]
        return int(count), int(size)

    async def uidl(self) -> dict[int, str] | None:
        try:
            await self.command("UIDL")
        except Pop3ConnectionLost:
            raise
        except Pop3Error:
            return None
        out: dict[int, str] = {}
        for ln in (await self.multiline("UIDL")).decode(errors="replace").splitlines():
            parts = ln.split()
            if len(parts) >= 2:
                out[int(parts[0])] = parts[1]
        return out

    async def list(self) -> dict[int, int]:
        await self.command("LIST")
        out: dict[int, int] = {}
        for ln in (await self.multiline("LIST")).decode(errors="replace").splitlines():
            parts = ln.split()
            if len(parts) >= 2:
                out[int(parts[0])] = int(parts[1])
        return out

    async def retr(self, n: int) -> bytes:
        await self.command(f"RETR {n}")
        return await self.multiline(f"RETR {n}")

    async def top(self, n: int, lines: int = 0) -> bytes | None:
        try:
            await self.command(f"TOP {n} {lines}")
        except Pop3ConnectionLost:
            raise
        except Pop3Error:
            return None
        return await self.multiline(f"TOP {n}")

    async def dele(self, n: int) -> None:
        await self.command(f"DELE {n}")

    async def quit(self) -> None:
        await self.command("QUIT")

    def tls_info(self) -> str | None:
        obj = self.writer.get_extra_info("ssl_object") if self.writer else None
        if obj is None:
            return None
        cipher = obj.cipher()
        return f"{obj.version()} {cipher[0] if cipher else ''}".strip()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()


def connect_client(cfg: Pop3Config) -> tuple[Pop3Client, ssl.SSLContext | None]:
    """A not-yet-connected client and the context for STLS (None unless tls: starttls)."""
    ctx = ssl_context_for(cfg) if cfg.tls != "none" else None
    client = Pop3Client(cfg.host, default_port(cfg, "pop3"), ssl_context=ctx if cfg.tls == "implicit" else None,
                        timeout=cfg.timeout, max_message_size=cfg.max_message_size)
    return client, ctx if cfg.tls == "starttls" else None


async def open_session(client: Pop3Client, cfg: Pop3Config, starttls: ssl.SSLContext | None) -> None:
    await client.connect()
    await client.capa()
    if starttls is not None:
        # No "STLS" in CAPA is not proof of absence (CAPA is optional); refusing is up to the server.
        await client.stls(starttls)
    await client.login(cfg.user, cfg.password())


class Pop3Poller(MailboxPoller):
    """One POP3 maildrop -> the spool. `await run()` until `await stop()`; never raises for server trouble."""

    intake = "pop3"
    identity = ("uidl",)
    extra_stats = ("deleted",)
    session_limit = 100  # messages per session; QUIT commits the DELEs
    batch_size = 20  # messages spooled together (one group commit)
    cfg: Pop3Config

    def __init__(self, cfg: Pop3Config, config: Config, spool: Spool) -> None:
        super().__init__(cfg, config, spool)
        self._left: set[str] = set()  # ledger keys of messages deliberately left on the server

    async def _poll(self) -> None:
        self._backoff = BackoffPolicy(self.backoff_initial, self.backoff_max)
        try:
            while not self._stopping:
                client: Pop3Client | None = None
                delay = self.cfg.poll_interval
                try:
                    client, starttls = connect_client(self.cfg)
                    more = await self._session(client, starttls)
                    self._backoff.reset()
                    self._last_error = None
                    delay = 0.0 if more else self.cfg.poll_interval
                except asyncio.CancelledError:
                    raise
                except Pop3AuthError as exc:
                    self._note_error(exc)
                    self._backoff.current = max(self._backoff.current, 60.0)
                    delay = self._backoff.next_delay()
                except (OSError, TimeoutError, ssl.SSLError, GatewayError, ConfigError) as exc:
                    self._note_error(exc)
                    delay = self._backoff.next_delay()
                except Exception as exc:  # a bug must not kill the intake
                    self.stats["errors"] += 1
                    self.log.exception("pop3.poller_error", error=repr(exc))
                    delay = self._backoff.next_delay()
                finally:
                    if client is not None:
                        client.abort()
                if not self._stopping and delay > 0:
                    await self._sleep(delay)
        finally:
            self.log.info("pop3.stopped")

    async def _session(self, client: Pop3Client, starttls: ssl.SSLContext | None) -> bool:
        """One connection. Returns True when messages remain for an immediate next session."""
        cfg = self.cfg
        if cfg.tls == "none" and not is_loopback(cfg.host):
            self.log.warning("pop3.plaintext", note="tls: none sends the password in clear text")
        await open_session(client, cfg, starttls)
        self.stats["sessions"] += 1
        uidl = await client.uidl()
        sizes = await client.list()
        self.log.debug("pop3.connected", host=cfg.host, messages=len(sizes), uidl=uidl is not None,
                       tls=client.tls_info())
        keys = {n: pop3_key(cfg.name, uidl[n]) for n in sizes if uidl and n in uidl}
        known = await self.ledger.stored(list(keys.values()))  # a placeholder's key is not: fetched again
        deleted: list[str] = []
        batch: list[tuple[int, FetchedMessage]] = []
        retrieved = 0
        more = False
        for n in sorted(sizes):
            if self._stopping:
                break
            key = keys.get(n)
            if key in self._left:
                continue
            if key is not None and key in known:
                qid = known[key]
                # Spooled before; the DELE (or the QUIT that makes it real) was lost.
                self.stats["refetched"] += 1
                self.log.info("pop3.already_spooled", queue_id=qid, key=key)
                await client.dele(n)
                deleted.append(qid)
                continue
            if retrieved >= self.session_limit:
                more = True
                break
            source: dict[str, Any] = {"uidl": uidl.get(n) if uidl else None, "msgno": n}
            if sizes[n] > cfg.max_message_size:
                head = await client.top(n, 0) or b""
                okey = key or pop3_key(cfg.name, "sha256-" + hashlib.sha256(head).hexdigest()[:40])
                outcome = await self.ledger.store_oversized(okey, head, sizes[n], source)
                if outcome.committed:
                    self.stats["oversized"] += int(outcome.created)
                    self._left.add(okey)
                continue
            try:
                raw = await client.retr(n)
            except Pop3ConnectionLost:
                raise
            except Pop3Error as exc:
                # The server cannot deliver this one (-ERR): record it (once) and go on with the others. It is
                # asked for again next session (a refused RETR costs the session nothing) and spooled once the
                # server returns it.
                if key is not None:
                    outcome = await self.ledger.store_left(
                        key, b"", source, event="unreadable",
                        reason=f"the server refused RETR ({exc}); the message was left in the mailbox")
                    self.stats["unreadable"] += int(outcome.created)
                else:
                    self.log.warning("pop3.unreadable", msgno=n, error=str(exc))
                continue
            retrieved += 1
            if key is None:
                # No UIDL: the content is the identity.
                key = pop3_key(cfg.name, "sha256-" + hashlib.sha256(raw).hexdigest()[:40])
            batch.append((n, FetchedMessage(key, raw, source)))
            if len(batch) >= self.batch_size:
                deleted += await self._flush(client, batch)
                batch = []
        if batch:
            deleted += await self._flush(client, batch)
        await client.quit()  # the server deletes now, not at DELE
        if deleted:
            self.stats["deleted"] += len(deleted)
            self.log.info("pop3.deleted", count=len(deleted), queue_ids=deleted)
        return more

    async def _flush(self, client: Pop3Client, batch: list[tuple[int, FetchedMessage]]) -> list[str]:
        outcomes = await self.ledger.store([m for _, m in batch])
        self._count(outcomes)
        crash_point()
        done: list[str] = []
        for (n, _m), o in zip(batch, outcomes, strict=True):
            if o.committed:
                await client.dele(n)
                done.append(o.queue_id or "")
        failed = [o for o in outcomes if not o.committed]
        if failed:
            # Leave them on the server; QUIT still commits the DELEs of the others.
            with contextlib.suppress(Pop3Error, OSError):
                await client.quit()
            raise Pop3Error(f"{len(failed)} message(s) could not be spooled: {failed[0].error}")
        return done

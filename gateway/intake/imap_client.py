"""The IMAP client connection under the poller: aioimaplib's IMAP4 and protocol with what a long-running
poller needs, and the parsing of the responses it reads.

aioimaplib leaves a command waiting forever when the connection drops (and `idle_start` when the server answers
BYE, aioimaplib#110), so every call is raced against the connection-lost callback and a timeout
(`ImapClient.call`). While a `gateway.intake.imap_pipeline.Pipeline` is installed it reads the connection
instead of aioimaplib (the catch-up's pipelined FETCHes and flag commands).

aioimaplib has no client STARTTLS: `ImapClient.starttls` adds it (STARTTLS command, then `loop.start_tls` on the
same transport and protocol, then CAPABILITY again as RFC 3501 §6.2.1 requires).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import re
import socket
import ssl
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import aioimaplib
from aioimaplib.aioimaplib import (
    AUTH,
    CRLF,
    Command,
    IMAP4ClientProtocol,
    IncompleteRead,
    literal_data_re,
    quoted,
)

from gateway.config import ImapConfig
from gateway.intake.imap_pipeline import ImapAuthError, ImapConnectionLost, ImapError, Pipeline
from gateway.intake.mailbox import default_port, ssl_context_for
from gateway.intake.oauth2 import TokenSource, xoauth2_initial_response

T = TypeVar("T")

_EXISTS = re.compile(rb"^\* \d+ EXISTS")
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_EXISTS_LINE = re.compile(rb"^(\d+) EXISTS")


def response_text(resp: Any) -> str:
    """The human text of a response (its last line), for error messages."""
    lines = getattr(resp, "lines", None) or [b""]
    last = lines[-1]
    return bytes(last).decode(errors="replace") if isinstance(last, bytes | bytearray) else str(last)


def _challenge_text(challenge: bytes | None) -> str:
    """XOAUTH2's error challenge is base64 JSON ({"status": "401", "schemes": "bearer", ...}): say its status."""
    if not challenge:
        return ""
    try:
        data = json.loads(base64.b64decode(challenge, validate=True))
    except (ValueError, binascii.Error):
        return ""
    return f" (server status {data.get('status')})" if isinstance(data, dict) and data.get("status") else ""


def parse_search(lines: Sequence[Any]) -> list[int]:
    uids: list[int] = []
    for line in lines[:-1]:
        if isinstance(line, bytes) and re.fullmatch(rb"[\d ]*", line):
            uids.extend(int(x) for x in line.split())
    return uids


def select_info(lines: Sequence[Any]) -> tuple[int | None, int | None]:
    """(UIDVALIDITY, EXISTS) from a SELECT response."""
    uidvalidity = exists = None
    for line in lines:
        if isinstance(line, bytes):
            if m := _UIDVALIDITY.search(line):
                uidvalidity = int(m.group(1))
            elif m := _EXISTS_LINE.match(line):
                exists = int(m.group(1))
    return uidvalidity, exists


class _WatchfulProtocol(IMAP4ClientProtocol):
    """aioimaplib's protocol with three changes: it notices EXISTS and BYE lines (aioimaplib drops them when no
    command waits for them), hands the connection to a `Pipeline` while one is installed, and parses a read
    buffer in a loop.

    aioimaplib 2.0's `_handle_responses` recurses once per response line and re-partitions the rest of the buffer
    each time: quadratic copying in the read size, and a RecursionError for a read holding ~1000 lines. The loop
    below keeps its exact semantics (same calls on the commands, same IncompleteRead hand-over) with an index.
    """

    def _handle_responses(self, data: bytes, line_handler: Any, current_cmd: Any = None) -> None:
        pos, end = 0, len(data)
        while True:
            if pos >= end:
                if self.pending_sync_command is not None:
                    self.pending_sync_command.flush()
                if current_cmd is not None and current_cmd.wait_data():
                    raise IncompleteRead(current_cmd)
                return
            if current_cmd is not None and current_cmd.wait_literal_data():
                need = current_cmd._expected_size - len(current_cmd._resp_literal_data)
                current_cmd.append_literal_data(data[pos : pos + need])
                pos = min(pos + need, end)
                if current_cmd.wait_literal_data():
                    raise IncompleteRead(current_cmd)
            nl = data.find(CRLF, pos)
            if nl < 0:
                raise IncompleteRead(current_cmd, data[pos:])
            line = data[pos:nl]
            pos = nl + 2
            cmd = line_handler(line, current_cmd)
            begin_literal = literal_data_re.match(line)
            if begin_literal:
                if cmd is None:
                    cmd = Command("NIL", "unused")
                cmd.begin_literal_data(int(begin_literal.group("size")))
                current_cmd = cmd
            elif cmd is not None and cmd.wait_data():
                current_cmd = cmd
            else:
                current_cmd = None

    incomplete_line: bytes
    current_command: Any

    def __init__(self, loop: asyncio.AbstractEventLoop, conn_lost_cb: Any) -> None:
        super().__init__(loop, conn_lost_cb)
        self.exists_seen = False
        self.bye: str | None = None
        self.auth_response: bytes | None = None  # SASL response to send when the server asks (no SASL-IR)
        self.auth_challenge: bytes | None = None  # the server's error challenge to a failed AUTHENTICATE
        self.pipeline: Pipeline | None = None  # while installed, it reads every response (see start_pipeline)

    def start_pipeline(self, *, timeout: float, max_literal: int) -> Pipeline:
        """Take the connection from aioimaplib's command machinery (no aioimaplib command may be running)."""
        if self.pending_sync_command is not None or self.pending_async_commands or self.current_command is not None:
            raise ImapError("internal: a pipeline was started while an aioimaplib command was running")
        self.pipeline = Pipeline(self, timeout=timeout, max_literal=max_literal, pending=self.incomplete_line)
        self.incomplete_line = b""
        return self.pipeline

    def end_pipeline(self, rest: bytes) -> None:
        """The pipeline is done: aioimaplib reads from here on, starting with an incomplete line it left."""
        self.pipeline = None
        self.incomplete_line = rest

    def _continuation(self, line: bytes) -> None:
        # aioimaplib's AUTHENTICATE support ends at sending the command: a "+" from the server (asking for the
        # response, or carrying XOAUTH2's error challenge, which wants an empty answer before the NO) would
        # leave the command waiting forever.
        cmd = self.pending_sync_command
        if cmd is None or cmd.name != "AUTHENTICATE":
            super()._continuation(line)
        elif self.auth_response is not None:
            self.transport.write(self.auth_response + CRLF)
            self.auth_response = None
        else:
            self.auth_challenge = line[1:].strip()
            self.transport.write(CRLF)

    # aioimaplib's data_received and send build a debug line of everything read or written with `%` before the
    # logger decides to drop it: a copy of every fetched byte as text, a tenth of the poller's CPU. Same code,
    # without that line (we never let aioimaplib log at debug level anyway: it would log mail and commands).
    def data_received(self, d: bytes) -> None:
        if self.pipeline is not None:
            self.pipeline.feed(d)
            return
        pending: bytes = self.incomplete_line
        try:
            self._handle_responses(pending + d if pending else d, self._handle_line, self.current_command)
            self.incomplete_line = b""
            self.current_command = None
        except IncompleteRead as incomplete_read:
            self.current_command = incomplete_read.cmd
            self.incomplete_line = incomplete_read.data

    def send(self, line: str, scrub: str | None = None) -> None:
        self.transport.write(f"{line}\r\n".encode())

    def note_untagged(self, line: bytes) -> None:
        """Remember what the poller needs to know from an untagged line, whoever reads it (aioimaplib or a
        `Pipeline`): new mail (EXISTS) and the server's parting words (BYE)."""
        if _EXISTS.match(line):
            self.exists_seen = True
        elif line.startswith(b"* BYE"):
            self.bye = line[2:].decode(errors="replace")

    def _untagged_response(self, line: bytes) -> Any:
        self.note_untagged(line)
        return super()._untagged_response(line)


class ImapClient(aioimaplib.IMAP4):
    """aioimaplib.IMAP4 plus what a long-running poller needs: STARTTLS, connection-loss and EXISTS tracking,
    and `call()`, which bounds every command by the connection's life and a timeout."""

    def __init__(self, host: str, port: int, *, ssl_context: ssl.SSLContext | None, timeout: float) -> None:
        self.lost = asyncio.Event()
        self.lost_reason: str | None = None
        self.protocol: _WatchfulProtocol
        super().__init__(host=host, port=port, timeout=timeout, conn_lost_cb=self._on_lost, ssl_context=ssl_context)

    def create_client(self, host: str, port: int, loop: asyncio.AbstractEventLoop | None,
                      conn_lost_cb: Any = None, ssl_context: ssl.SSLContext | None = None) -> None:
        local_loop = loop if loop is not None else asyncio.get_running_loop()
        self.protocol = _WatchfulProtocol(local_loop, conn_lost_cb)
        self._client_task = local_loop.create_task(
            local_loop.create_connection(lambda: self.protocol, host, port, ssl=ssl_context))

    def _on_lost(self, exc: Exception | None) -> None:
        self.lost_reason = str(exc) if exc else (self.protocol.bye or "closed by the server")
        self.lost.set()
        if self.protocol.pipeline is not None:
            self.protocol.pipeline.fail(ImapConnectionLost(f"connection lost: {self.lost_reason}"))

    def start_pipeline(self, max_literal: int) -> Pipeline:
        if self.lost.is_set():
            raise ImapConnectionLost(f"connection lost: {self.lost_reason}")
        return self.protocol.start_pipeline(timeout=self.timeout, max_literal=max_literal)

    @property
    def capabilities(self) -> set[str]:
        return set(self.protocol.capabilities)

    async def call(self, aw: Awaitable[T], what: str, timeout: float | None = None) -> T:
        """Await `aw` unless the connection drops or `timeout` (default: the client's) passes first. (A FETCH of
        many megabytes is bounded by inactivity instead: it goes through `Pipeline.wait`.)"""
        if self.lost.is_set():
            raise ImapConnectionLost(f"connection lost before {what}: {self.lost_reason}")
        task = asyncio.ensure_future(aw)
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            done, _ = await asyncio.wait({task, lost}, timeout=timeout or self.timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not task.done():
                task.cancel()
        if task in done:
            return task.result()
        if lost in done:
            raise ImapConnectionLost(f"connection lost during {what}: {self.lost_reason}")
        raise ImapConnectionLost(f"no answer to {what} within {timeout or self.timeout:g}s (watchdog)")

    async def ok(self, aw: Awaitable[Any], what: str, timeout: float | None = None) -> Any:
        resp = await self.call(aw, what, timeout)
        if resp.result != "OK":
            raise ImapError(f"{what}: {resp.result} {response_text(resp)}")
        return resp

    async def open(self, user: str, password: str | None, *, starttls: ssl.SSLContext | None,
                   tokens: TokenSource | None = None) -> None:
        """Greeting, optional STARTTLS, LOGIN (or XOAUTH2 with a token from `tokens`), fresh CAPABILITY."""
        await self.call(self.wait_hello_from_server(), "greeting")
        self._keepalive()
        if starttls is not None:
            await self.starttls(starttls)
        if tokens is None:
            assert password is not None
            await self.open_authenticated(user, password)
            return
        token, fresh = await tokens.token_info()
        try:
            await self.open_oauth2(user, token)
        except ImapAuthError:
            if fresh:
                raise
            tokens.invalidate()  # a cached token can be revoked before it expires: one more try, with a new one
            await self.open_oauth2(user, await tokens.token())

    async def open_authenticated(self, user: str, password: str) -> None:
        """LOGIN, then a fresh CAPABILITY."""
        if "LOGINDISABLED" in self.capabilities:
            raise ImapAuthError("the server refuses LOGIN on this connection (LOGINDISABLED): use TLS")
        resp = await self.call(self.login(quoted(user), password), "LOGIN")
        if resp.result != "OK":
            raise ImapAuthError(f"LOGIN refused: {response_text(resp)}")
        # LOGIN's inline [CAPABILITY …] is parsed badly by aioimaplib ("MOVE]"): ask again.
        await self.call(self.protocol.capability(), "CAPABILITY")

    async def open_oauth2(self, user: str, token: str) -> None:
        """AUTHENTICATE XOAUTH2 (with SASL-IR when offered), then a fresh CAPABILITY."""
        if "AUTH=XOAUTH2" not in self.capabilities:
            raise ImapAuthError("the server does not offer AUTH=XOAUTH2 (oauth2 is configured for this mailbox)")
        response = xoauth2_initial_response(user, token)
        protocol = self.protocol
        protocol.auth_challenge = None
        if "SASL-IR" in self.capabilities:
            cmd = Command("AUTHENTICATE", protocol.new_tag(), "XOAUTH2", response, loop=protocol.loop)
        else:
            protocol.auth_response = response.encode("ascii")
            cmd = Command("AUTHENTICATE", protocol.new_tag(), "XOAUTH2", loop=protocol.loop)
        try:
            resp = await self.call(protocol.execute(cmd), "AUTHENTICATE XOAUTH2")
        finally:
            protocol.auth_response = None
        if resp.result != "OK":
            raise ImapAuthError(f"XOAUTH2 refused: {response_text(resp)}{_challenge_text(protocol.auth_challenge)}")
        protocol.state = AUTH
        await self.call(protocol.capability(), "CAPABILITY")

    async def starttls(self, ctx: ssl.SSLContext) -> None:
        if "STARTTLS" not in self.capabilities:
            # Never fall back to plaintext: that is exactly what a downgrade attack would provoke.
            raise ImapError("tls: starttls but the server does not offer STARTTLS")
        cmd = Command("STARTTLS", self.protocol.new_tag(), loop=self.protocol.loop)
        resp = await self.call(self.protocol.execute(cmd), "STARTTLS")
        if resp.result != "OK":
            raise ImapError(f"STARTTLS refused: {response_text(resp)}")
        loop = asyncio.get_running_loop()
        transport = await self.call(loop.start_tls(self.protocol.transport, self.protocol, ctx,
                                                   server_hostname=self.host), "TLS handshake")
        self.protocol.transport = transport
        await self.call(self.protocol.capability(), "CAPABILITY")

    def _keepalive(self) -> None:
        """TCP keepalive so a silently dead peer (NAT timeout) is noticed in minutes, not hours."""
        sock = self.protocol.transport.get_extra_info("socket") if self.protocol.transport else None
        if sock is None:
            return
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if hasattr(socket, "TCP_KEEPIDLE"):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 15)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)

    def tls_info(self) -> str | None:
        transport = self.protocol.transport
        obj = transport.get_extra_info("ssl_object") if transport else None
        if obj is None:
            return None
        cipher = obj.cipher()
        return f"{obj.version()} {cipher[0] if cipher else ''}".strip()

    def abort(self) -> None:
        transport = self.protocol.transport
        if transport is not None:
            transport.abort()

    async def close_gracefully(self) -> None:
        """LOGOUT if the connection is healthy, then drop it. Never raises."""
        if not self.lost.is_set() and self.protocol.pipeline is None \
                and self.protocol.state in ("AUTH", "SELECTED", "NONAUTH"):
            with contextlib.suppress(Exception):
                await self.call(self.logout(), "LOGOUT", timeout=min(self.timeout, 5.0))
        self.abort()


def connect_client(cfg: ImapConfig) -> tuple[ImapClient, ssl.SSLContext | None]:
    """A not-yet-opened client for this mailbox and the STARTTLS context to pass to `open` (or None)."""
    ctx = ssl_context_for(cfg) if cfg.tls != "none" else None
    client = ImapClient(cfg.host, default_port(cfg, "imap"), ssl_context=ctx if cfg.tls == "implicit" else None,
                        timeout=cfg.timeout)
    return client, ctx if cfg.tls == "starttls" else None
